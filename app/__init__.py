"""slimlab's terminal UI. Reads run directories (engine.runs), never imports torch."""
