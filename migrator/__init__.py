"""migrator: async, resumable, exactly-once bulk migration between LMS APIs."""
