"""The `testbed` command (vendors, city evaluators, operators) and the end-to-end demo."""
