-- Mimir's database, roles and schema on PostgreSQL 15 (the Debian 12 packages are enough).
--
-- Run once as a superuser; running it again is safe (it converges, it does not duplicate):
--
--   psql -X -v ON_ERROR_STOP=1 \
--        -v app_password="$MIMIR_APP_PASSWORD" -v readonly_password="$MIMIR_RO_PASSWORD" \
--        -f ops/postgres/init.sql
--
-- Variables (all optional): dbname (default mimir); app_password and readonly_password
-- (without them the roles get no password: use peer or certificate authentication).
-- Then point Mimir at it:  DATABASE_URL=postgresql://mimir_app:...@db-host:5432/mimir
-- and run `mimir db upgrade` (or let Mimir migrate on start, MIMIR_DB_MIGRATE_ON_START=true).
--
-- Layout decision: all of Mimir's tables live in the schema "mimir", owned by mimir_app so it
-- can run the migrations. Migration files use unqualified names; the migration runner and the
-- store pin search_path to "mimir" on every connection (and the role default below does the
-- same for psql sessions), so nothing depends on "public".

\set ON_ERROR_STOP on
\if :{?dbname}
\else
  \set dbname mimir
\endif

-- Roles ----------------------------------------------------------------------------------
-- mimir_app: the service's login role. It owns the mimir schema and nothing else: no
-- superuser, no CREATEDB/CREATEROLE, no replication, no RLS bypass, a connection cap.
SELECT 'CREATE ROLE mimir_app LOGIN'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mimir_app') \gexec
ALTER ROLE mimir_app WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
  CONNECTION LIMIT 200;

-- mimir_readonly: dashboards, reporting and humans; can read Mimir's tables and nothing more.
SELECT 'CREATE ROLE mimir_readonly LOGIN'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mimir_readonly') \gexec
ALTER ROLE mimir_readonly WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
  CONNECTION LIMIT 20;

\if :{?app_password}
ALTER ROLE mimir_app PASSWORD :'app_password';
\endif
\if :{?readonly_password}
ALTER ROLE mimir_readonly PASSWORD :'readonly_password';
\endif

-- Database -------------------------------------------------------------------------------
-- Owned by the superuser running this script, not by the app: the app cannot drop it,
-- change its settings or grant access to others.
SELECT format('CREATE DATABASE %I ENCODING ''UTF8'' TEMPLATE template0', :'dbname')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'dbname') \gexec

REVOKE ALL ON DATABASE :"dbname" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"dbname" TO mimir_app;
GRANT CONNECT ON DATABASE :"dbname" TO mimir_readonly;

ALTER ROLE mimir_app IN DATABASE :"dbname" SET search_path = mimir;
ALTER ROLE mimir_app IN DATABASE :"dbname" SET idle_in_transaction_session_timeout = '60s';
ALTER ROLE mimir_readonly IN DATABASE :"dbname" SET search_path = mimir;
ALTER ROLE mimir_readonly IN DATABASE :"dbname" SET default_transaction_read_only = on;
ALTER ROLE mimir_readonly IN DATABASE :"dbname" SET statement_timeout = '60s';

\connect :"dbname"

-- Extensions (contrib, shipped with postgresql-15 on Debian 12) ----------------------------
-- pg_stat_statements needs shared_preload_libraries (ops/postgres/tuning.conf sets it).
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- Schemas --------------------------------------------------------------------------------
-- Nobody but the database owner creates objects in public (PostgreSQL 15's default, made explicit).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

CREATE SCHEMA IF NOT EXISTS mimir AUTHORIZATION mimir_app;
ALTER SCHEMA mimir OWNER TO mimir_app;
REVOKE ALL ON SCHEMA mimir FROM PUBLIC;

GRANT USAGE ON SCHEMA mimir TO mimir_readonly;
GRANT SELECT ON ALL TABLES IN SCHEMA mimir TO mimir_readonly;
-- Tables that later migrations create (as mimir_app) are readable too.
ALTER DEFAULT PRIVILEGES FOR ROLE mimir_app IN SCHEMA mimir GRANT SELECT ON TABLES TO mimir_readonly;
