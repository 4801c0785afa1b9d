"""Ordered, health-gated rollouts of the node scripts, with rollback (issue #26, point 2).

plan.py is the pure part (the steps and the state machine over data); ssm.py runs it against
SSM (boto3 client injected): one host at a time, rollback on the first failure, the stack's
rollout lock; stack.py finds a deployed stack's hosts, versions and gates (`llmfleet up`,
`llmfleet rollout`).
"""
