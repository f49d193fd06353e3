"""The export formats, in a module light enough for the CLI to import at start-up."""

FORMATS = ("arrow", "parquet", "csv", "jsonl", "xlsx", "openai-batch")
