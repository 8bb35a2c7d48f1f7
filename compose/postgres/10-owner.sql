-- Run once by the postgres image on a new data directory (/docker-entrypoint-initdb.d/), as the
-- superuser: the application's database and its owner, the login the bootstrap hands to Vault's
-- database engine. The owner may create roles (Vault creates each capability's short-lived users
-- with it) but is no superuser. Nobody else may connect to the database or create anything in it.
-- Its password comes from a file, never from this script or the command line.
-- psql variables (defaults for compose): owner, database, owner_password_file.
\if :{?owner}
\else
  \set owner mcp_owner
\endif
\if :{?database}
\else
  \set database mcp
\endif
\if :{?owner_password_file}
\else
  \set owner_password_file /run/secrets/pg_owner_password
\endif
\set owner_password `cat :'owner_password_file'`

CREATE ROLE :"owner" LOGIN CREATEROLE NOSUPERUSER NOCREATEDB PASSWORD :'owner_password';
CREATE DATABASE :"database" OWNER :"owner";
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
\connect :"database"
ALTER SCHEMA public OWNER TO :"owner";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
