"""Plain-Python APIs behind the commands: loading, compress/export, profile, reports."""
