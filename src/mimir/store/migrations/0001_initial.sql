-- Mimir metadata, version 1: repositories, indexes, runs and their stages, files,
-- symbol summaries, the query log and the audit log.
--
-- Names are unqualified: the migration runner and the store pin search_path to the
-- target schema ("mimir" by default), so the same file works in any schema.
-- Times are timestamptz; documents (manifests, errors, stage details) are jsonb.

CREATE TABLE repositories (
    repository_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    root          text NOT NULL UNIQUE,
    name          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE indexes (
    index_id      text PRIMARY KEY,
    repository_id bigint NOT NULL REFERENCES repositories (repository_id),
    rev           text,
    commit_id     text,
    lens_repo     text NOT NULL,
    status        text NOT NULL,
    latest_run    text,
    manifest      jsonb,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX indexes_commit ON indexes (commit_id);
CREATE INDEX indexes_repository ON indexes (repository_id, updated_at DESC);
CREATE INDEX indexes_updated ON indexes (updated_at DESC);

CREATE TABLE runs (
    run_id      text PRIMARY KEY,
    index_id    text NOT NULL REFERENCES indexes (index_id) ON DELETE CASCADE,
    state       text NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    stage       text NOT NULL,
    percent     double precision NOT NULL,
    message     text NOT NULL,
    error       jsonb,
    pid         integer,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    finished_at timestamptz
);
CREATE INDEX runs_index ON runs (index_id, created_at);

CREATE TABLE run_stages (
    run_id     text NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    stage      text NOT NULL,
    started_at timestamptz NOT NULL,
    seconds    double precision,
    status     text NOT NULL,
    detail     jsonb,
    PRIMARY KEY (run_id, stage)
);

CREATE TABLE files (
    index_id text NOT NULL REFERENCES indexes (index_id) ON DELETE CASCADE,
    path     text NOT NULL,
    language text,
    bytes    bigint NOT NULL CHECK (bytes >= 0),
    sha256   text NOT NULL,
    oid      text,
    PRIMARY KEY (index_id, path)
);

CREATE TABLE symbol_summary (
    index_id text NOT NULL REFERENCES indexes (index_id) ON DELETE CASCADE,
    kind     text NOT NULL,
    language text NOT NULL,
    count    integer NOT NULL CHECK (count >= 0),
    PRIMARY KEY (index_id, kind, language)
);

-- Logs keep no foreign keys: they outlive the indexes they mention.
CREATE TABLE query_log (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    kind      text NOT NULL,
    index_id  text,
    query     text NOT NULL,
    k         integer,
    took_ms   double precision NOT NULL,
    results   integer NOT NULL,
    principal text NOT NULL
);
CREATE INDEX query_log_at ON query_log USING brin (at);
CREATE INDEX query_log_index ON query_log (index_id, id DESC);

CREATE TABLE audit_log (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    action    text NOT NULL,
    principal text NOT NULL,
    target    text,
    detail    jsonb
);
CREATE INDEX audit_log_action ON audit_log (action, id DESC);
CREATE INDEX audit_log_principal ON audit_log (principal, id DESC);
