"""Monthly traffic per VE: metered from the engine's counters, held to its plan's quota (issue 15)."""
