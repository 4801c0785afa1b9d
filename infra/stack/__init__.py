"""The pure model of one stack: config, planner, the resolved Stack, the outputs contract.

No Pulumi and no boto3 here (an import-linter contract holds it): everything in this package
is computed from the stack file and the catalog alone, so the CLI, the policy pack, the cost
preview and the program all read one answer.
"""
