-- The fleet database of spec 80. Every table lives in the schema named by
-- postgres.schema (the runner sets search_path). Timestamps are in the
-- database's clock: a host maps its own times onto it by the skew it
-- measures at every (re)connect and resync.
CREATE TABLE fleet_settings (
  id BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
  min_client_version TEXT CHECK (min_client_version ~ '^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$'),
  degraded_after INTERVAL NOT NULL DEFAULT '30 s',
  offline_after INTERVAL NOT NULL DEFAULT '60 s',
  host_offline_after INTERVAL NOT NULL DEFAULT '90 s',
  inbox_capacity INTEGER NOT NULL DEFAULT 128 CHECK (inbox_capacity > 0),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now());

CREATE TABLE hosts (
  host_id TEXT PRIMARY KEY CHECK (host_id ~ '^[a-z][a-z0-9-]{0,31}$'),
  boot_id TEXT,
  daemon_version TEXT NOT NULL,
  schema_version INTEGER NOT NULL,
  started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  last_seen_at TIMESTAMPTZ NOT NULL DEFAULT now());

CREATE TABLE peers (
  personality TEXT PRIMARY KEY CHECK (personality ~ '^[a-z][a-z0-9-]{0,31}$'),
  host_id TEXT NOT NULL REFERENCES hosts(host_id),
  runtimes TEXT[] NOT NULL,
  description TEXT NOT NULL DEFAULT '',
  present BOOLEAN NOT NULL DEFAULT true,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now());

CREATE TABLE revocations (
  node_id TEXT PRIMARY KEY,
  revoked_by TEXT NOT NULL CHECK (revoked_by IN ('core','operator','birth')),
  reason TEXT,
  revoked_at TIMESTAMPTZ NOT NULL);

-- One row per session of a node; the domain's Attachment row, column for
-- column (health is the session's reported health).
CREATE TABLE runtime_node_attachments (
  id TEXT PRIMARY KEY,
  node_id TEXT NOT NULL,
  session_id TEXT NOT NULL CHECK (session_id <> ''),
  host_id TEXT NOT NULL REFERENCES hosts(host_id),
  capabilities JSONB NOT NULL DEFAULT '{}',
  client_version TEXT NOT NULL,
  state TEXT NOT NULL DEFAULT 'registering'
    CHECK (state IN ('registering','online','degraded','offline','revoked')),
  health TEXT NOT NULL DEFAULT 'online' CHECK (health IN ('online','degraded','offline')),
  pid INTEGER,
  pid_start TEXT,
  attached_at TIMESTAMPTZ NOT NULL,
  last_heartbeat_at TIMESTAMPTZ NOT NULL,
  updated_at TIMESTAMPTZ NOT NULL
-- Room on each page, so the flush's update of last_heartbeat_at (never
-- indexed) stays a HOT update.
) WITH (fillfactor = 70);
CREATE UNIQUE INDEX idx_node_attachments_node ON runtime_node_attachments(node_id, session_id);
CREATE UNIQUE INDEX idx_node_attachments_active ON runtime_node_attachments(node_id)
  WHERE state IN ('registering','online','degraded');
CREATE INDEX idx_node_attachments_host_active ON runtime_node_attachments(host_id)
  WHERE state IN ('registering','online','degraded');

-- The per-node lock row (taken first by every presence change) and the
-- node's newest heartbeat; never indexed beyond its key, so a heartbeat
-- flush is a HOT update.
CREATE TABLE runtime_node_presence (
  node_id TEXT PRIMARY KEY,
  last_heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  health_state TEXT NOT NULL DEFAULT 'online' CHECK (health_state IN ('online','degraded','offline'))
) WITH (fillfactor = 70);

CREATE TABLE links (
  a TEXT NOT NULL REFERENCES peers(personality),
  b TEXT NOT NULL REFERENCES peers(personality),
  linked_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (a, b),
  CHECK (a < b));
CREATE INDEX idx_links_b ON links(b);

-- A peer's mailbox (spec 50 with threads, receipts and history): the
-- messages waiting for it, those it received and sent, the ids dropped
-- from its inbox, and its recent send times, one row per item, in order of
-- seq. Every change locks the owner's peers row first (FOR NO KEY UPDATE).
CREATE TABLE mail (
  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  personality TEXT NOT NULL REFERENCES peers(personality),
  box TEXT NOT NULL CHECK (box IN ('waiting','received','sent','dropped','sends')),
  id TEXT NOT NULL,
  body JSONB NOT NULL,
  -- A history item's time (a received message's delivery, a sent one's
  -- sending), by the database's clock: what the history is pruned by.
  at TIMESTAMPTZ,
  UNIQUE (personality, box, id));
CREATE INDEX idx_mail_order ON mail(personality, box, seq);
CREATE INDEX idx_mail_at ON mail(personality, box, at) WHERE at IS NOT NULL;

CREATE TABLE events (
  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  ts TIMESTAMPTZ NOT NULL,
  host_id TEXT NOT NULL,
  event TEXT NOT NULL,
  node_id TEXT,
  body JSONB NOT NULL,
  -- The writing transaction's start, by the database's clock: a follower
  -- waits at a gap in seq (a transaction still open) until the row after
  -- it is older than any transaction lives.
  written_at TIMESTAMPTZ NOT NULL DEFAULT now());
CREATE INDEX idx_events_node ON events(node_id, seq) WHERE node_id IS NOT NULL;
CREATE INDEX idx_events_ts ON events(ts);

-- The daemon's last whole-fleet surface sweep, per host.
CREATE TABLE host_sweeps (
  host_id TEXT PRIMARY KEY REFERENCES hosts(host_id),
  body JSONB NOT NULL);
