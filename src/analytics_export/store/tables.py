"""The job store's schema (SQLAlchemy Core); alembic migrations create and evolve it."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

exports = sa.Table(
    "exports",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("project", sa.String(200), nullable=False),
    sa.Column("request", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("completed_at", sa.DateTime(timezone=True)),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("events_done", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("bytes_done", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("events_expected", sa.BigInteger),
    sa.Column("total_events", sa.BigInteger),
    sa.Column("file_size", sa.BigInteger),
    sa.Column("destination_path", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("lease_owner", sa.String(100)),
    sa.Column("lease_expires", sa.DateTime(timezone=True)),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("duration_seconds", sa.Float),
    sa.Column("retry_at", sa.DateTime(timezone=True)),
    sa.Column("parts", sa.Integer),
    sa.Column("parts_done", sa.Integer),
    sa.Column("privacy_version", sa.Integer),
    sa.Column("dropped_properties", sa.JSON),
    sa.Index("ix_exports_project_created", "project", "created_at"),
    sa.Index("ix_exports_status_lease", "status", "lease_expires"),
)

export_parts = sa.Table(
    "export_parts",
    metadata,
    sa.Column("export_id", sa.String(36), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True),
    sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("lease_owner", sa.String(100)),
    sa.Column("lease_expires", sa.DateTime(timezone=True)),
    sa.Column("retry_at", sa.DateTime(timezone=True)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("events_done", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("bytes_done", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("files", sa.JSON),
    sa.Column("error", sa.Text),
    sa.Index("ix_export_parts_status", "status", "lease_expires"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_hash", sa.String(64), primary_key=True),
    sa.Column("project", sa.String(200), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("id", sa.String(32), nullable=False),
    sa.Column("prefix", sa.String(16)),
    sa.Column("last_used_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Index("ix_api_keys_id", "id", unique=True),
    sa.Index("ix_api_keys_project", "project"),
)

connections = sa.Table(
    "connections",
    metadata,
    sa.Column("project", sa.String(200), primary_key=True),
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("fields", sa.JSON, nullable=False),
    sa.Column("sealed", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("project", sa.String(200), nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("paused_reason", sa.Text),
    sa.Column("watermark", sa.DateTime(timezone=True)),
    sa.Column("last_run", sa.DateTime(timezone=True)),
    sa.Column("next_run", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_schedules_due", "enabled", "next_run"),
)

schedule_runs = sa.Table(
    "schedule_runs",
    metadata,
    sa.Column("schedule_id", sa.String(36), primary_key=True),
    sa.Column("window_start", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
    sa.Column("export_id", sa.String(36), nullable=False),
    sa.Column("planned", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("owner", sa.String(100), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)

privacy_policies = sa.Table(
    "privacy_policies",
    metadata,
    sa.Column("project", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("rules", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

privacy_secrets = sa.Table(
    "privacy_secrets",
    metadata,
    sa.Column("project", sa.String(200), primary_key=True),
    sa.Column("sealed", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

suppressions = sa.Table(
    "suppressions",
    metadata,
    sa.Column("project", sa.String(200), primary_key=True),
    sa.Column("distinct_id", sa.Text, primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

retention_policies = sa.Table(
    "retention_policies",
    metadata,
    sa.Column("project", sa.String(200), primary_key=True),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("next_run", sa.DateTime(timezone=True)),
    sa.Column("last_run", sa.DateTime(timezone=True)),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

retention_windows = sa.Table(
    "retention_windows",
    metadata,
    sa.Column("project", sa.String(200), primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("generation", sa.Integer, primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("watermark", sa.DateTime(timezone=True), nullable=False),
    sa.Column("events", sa.BigInteger),
    sa.Column("read", sa.BigInteger),
    sa.Column("bytes", sa.BigInteger),
    sa.Column("sha256", sa.String(64)),
    sa.Column("uri", sa.Text),
    sa.Column("privacy_version", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

streams = sa.Table(
    "streams",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("project", sa.String(200), nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("cursor_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("cursor_uuid", sa.String(64), nullable=False, server_default=""),
    sa.Column("delivered_events", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("delivered_batches", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("last_delivered_at", sa.DateTime(timezone=True)),
    sa.Column("lag_seconds", sa.Float),
    sa.Column("last_error", sa.Text),
    sa.Column("failing_since", sa.DateTime(timezone=True)),
    sa.Column("lease_owner", sa.String(100)),
    sa.Column("lease_expires", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_streams_project", "project", "created_at"),
)

alert_channels = sa.Table(
    "alert_channels",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("project", sa.String(200), nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_alert_channels_project", "project", "created_at"),
)

alert_incidents = sa.Table(
    "alert_incidents",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("project", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("object_type", sa.String(16), nullable=False),
    sa.Column("object_id", sa.String(200), nullable=False),
    sa.Column("open_key", sa.String(260)),  # kind:object id while open, NULL once resolved: one open incident each
    sa.Column("error", sa.Text),
    sa.Column("attempts", sa.Integer),
    sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("resolved_at", sa.DateTime(timezone=True)),
    sa.Column("resolution", sa.Text),
    sa.Index("ix_alert_incidents_open_key", "open_key", unique=True),
    sa.Index("ix_alert_incidents_project", "project", "opened_at"),
)

alert_deliveries = sa.Table(
    "alert_deliveries",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("incident_id", sa.String(36), nullable=False),
    sa.Column("channel_id", sa.String(36), nullable=False),
    sa.Column("event", sa.String(16), nullable=False),  # opened or resolved
    sa.Column("status", sa.String(16), nullable=False),  # pending, sent, failed, skipped
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_alert_deliveries_due", "status", "next_attempt_at"),
    sa.Index("ix_alert_deliveries_incident", "incident_id"),
)
