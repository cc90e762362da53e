"""Output: a human view (rich) and a versioned JSON view, chosen once by the CLI."""
