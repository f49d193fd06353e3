"""The export formats, in a module light enough for the CLI to import at start-up."""

FORMATS = ("arrow", "parquet", "csv", "jsonl", "xlsx", "openai-batch")
# Text formats, written row by row: these may go to standard output (``-o -``); the others
# are binary files with a footer or a zip directory at the end.
STREAMABLE = ("csv", "jsonl", "openai-batch")
