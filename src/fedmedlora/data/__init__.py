"""Annotated documents: the data model, the target schema, readers and writers, synthetic sites."""
