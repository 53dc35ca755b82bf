"""The job store: exports, partitions, schedules, streams state, keys, connections, privacy policies and
retention windows in one database (SQLite by default, PostgreSQL for many workers), with its migrations."""
