"""Federation on Flower: pure aggregation functions, and thin ServerApp/ClientApp glue."""
