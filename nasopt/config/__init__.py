"""Study files: the schema, and the docs of its keys."""
