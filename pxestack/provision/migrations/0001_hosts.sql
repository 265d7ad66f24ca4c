-- pxestack's shared state on PostgreSQL: host records, the claims that keep enrolment exact
-- across several servers, the audit log and cluster-wide settings.

CREATE TABLE cluster (
    id smallint PRIMARY KEY CHECK (id = 1),
    -- The cluster's default etcd discovery token (cluster.json's DefaultEtcdClusterToken).
    etcd_token text NOT NULL,
    -- The secret per-host callback tokens derive from; shared, so any server checks them.
    callback_key bytea NOT NULL CHECK (length(callback_key) >= 16)
);

-- One row per machine; the record is the same JSON a conf.json holds.
CREATE TABLE hosts (
    serial text PRIMARY KEY CHECK (serial <> '' AND serial = lower(serial)),
    record jsonb NOT NULL,
    etag text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);

-- The configured profiles and how many machines each may have (synchronised at start).
CREATE TABLE profiles (
    name text PRIMARY KEY,
    quantity integer NOT NULL CHECK (quantity >= 0)
);

-- A machine's place in a configured profile: slot numbers are unique per profile and below
-- the profile's quantity, so no interleaving of servers can over-fill a profile.
CREATE TABLE profile_slots (
    profile text NOT NULL REFERENCES profiles (name) ON UPDATE CASCADE,
    slot integer NOT NULL CHECK (slot >= 0),
    serial text NOT NULL UNIQUE REFERENCES hosts (serial) ON DELETE CASCADE,
    PRIMARY KEY (profile, slot)
);

CREATE FUNCTION pxestack_slot_within_quantity() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    allowed integer;
BEGIN
    SELECT quantity INTO allowed FROM profiles WHERE name = NEW.profile;
    IF allowed IS NULL OR NEW.slot >= allowed THEN
        RAISE EXCEPTION 'profile % is full (quantity %)', NEW.profile, allowed
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER profile_slots_within_quantity
    BEFORE INSERT OR UPDATE ON profile_slots
    FOR EACH ROW EXECUTE FUNCTION pxestack_slot_within_quantity();

-- A machine's internal address (InternalAddr): each address belongs to one machine.
CREATE TABLE address_claims (
    address inet PRIMARY KEY,
    serial text NOT NULL UNIQUE REFERENCES hosts (serial) ON DELETE CASCADE
);

-- Every change, in commit order: what the git audit holds for the directory store.
CREATE TABLE audit (
    id bigserial PRIMARY KEY,
    serial text,
    at timestamptz NOT NULL DEFAULT now(),
    author text NOT NULL,
    message text NOT NULL,
    -- The record after the change (NULL: removed, or a cluster-level change).
    record jsonb,
    -- The server that made the change (host name and PID).
    server text NOT NULL
);
CREATE INDEX audit_serial ON audit (serial, id);

-- Cluster-level files the directory store keeps beside cluster.json (mayu-config.yaml).
CREATE TABLE cluster_files (
    name text PRIMARY KEY,
    data bytea NOT NULL
);
