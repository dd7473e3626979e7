"""Non-UI logic of the TUI: run scanning, log tailing, series, forms, launching. No textual here."""
