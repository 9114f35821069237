"""Pure helpers that need no Django."""
