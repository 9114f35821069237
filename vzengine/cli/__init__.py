"""Command-line tools: vzctl and vzlist."""
