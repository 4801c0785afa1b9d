"""Cost: price books (snapshot / live Price List API), usage files, Infracost JSON, capacity blocks."""
