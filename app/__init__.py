"""slimlab's terminal UI. Reads run directories (engine.contract), never imports torch."""
