"""Self-contained HTML reports and results.json writing, shared by every command."""
