-- DHCP leases shared by every server on a segment (dhcp.lease_store: postgresql).
-- One row per address: the address is the primary key, so two servers can never hold one
-- address for two clients; a claim is an upsert that only takes a row that is free, has
-- ended, or already belongs to the same client.  Times are epoch seconds (the servers'
-- clocks must agree, as for any shared lease database).
CREATE TABLE dhcp_leases (
    address inet PRIMARY KEY,
    -- The lease key (option 61 or chaddr, with a one-byte prefix); NULL for a quarantine.
    client bytea,
    mac bytea,
    client_id bytea,
    hostname text,
    state text NOT NULL CHECK (state IN ('offered', 'bound', 'free', 'declined')),
    -- When the offer hold, the binding or the quarantine ends; for 'free', when it ended.
    expires double precision NOT NULL,
    -- The server that wrote the row last (its configured or host name).
    server text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dhcp_leases_client ON dhcp_leases (client);

-- One batch of claims, applied in order in one statement (one round trip, one commit).
-- ops: a JSON array of {"t": kind, "a": address, "k": client (hex), "m": mac (hex),
-- "i": client id (hex) or null, "h": host name or null, "e": expires, "n": the subnet of
-- an offer or null}.  Returns, for each
-- refused claim, the row that holds the address, and for each 'find', the client's row.
CREATE FUNCTION pxestack_dhcp_claims(ops jsonb, at double precision, by_server text)
RETURNS TABLE (op integer, r_address inet, r_client bytea, r_mac bytea, r_client_id bytea,
               r_hostname text, r_state text, r_expires double precision)
LANGUAGE plpgsql AS $$
DECLARE
    o jsonb;
    i integer := -1;
    kind text;
    a inet;
    k bytea;
    taken boolean;
BEGIN
    FOR o IN SELECT value FROM jsonb_array_elements(ops) LOOP
        i := i + 1;
        kind := o->>'t';
        a := (o->>'a')::inet;
        k := decode(o->>'k', 'hex');
        IF kind = 'offer' THEN
            -- A client bound to another address of the same subnet (by another server)
            -- is offered that one: answer its row, claim nothing.  A binding in another
            -- subnet (a machine moved to another rack) ends when it binds here.
            RETURN QUERY SELECT i, l.address, l.client, l.mac, l.client_id, l.hostname,
                                l.state, l.expires
                FROM dhcp_leases l
                WHERE l.client = k AND l.address <> a AND l.state = 'bound'
                  AND l.expires > at
                  AND (o->>'n' IS NULL OR l.address << (o->>'n')::cidr)
                LIMIT 1;
            IF FOUND THEN
                CONTINUE;
            END IF;
        END IF;
        IF kind IN ('offer', 'bind') THEN
            taken := NULL;
            INSERT INTO dhcp_leases AS l (address, client, mac, client_id, hostname, state,
                                          expires, server, updated_at)
            VALUES (a, k, decode(o->>'m', 'hex'), decode(o->>'i', 'hex'), o->>'h',
                    CASE kind WHEN 'offer' THEN 'offered' ELSE 'bound' END,
                    (o->>'e')::double precision, by_server, now())
            ON CONFLICT (address) DO UPDATE SET
                client = excluded.client, mac = excluded.mac,
                client_id = excluded.client_id, hostname = excluded.hostname,
                -- An offer never shortens the client's own unexpired binding.
                state = CASE WHEN excluded.state = 'offered' AND l.state = 'bound'
                                  AND l.client = excluded.client AND l.expires > at
                             THEN 'bound' ELSE excluded.state END,
                expires = CASE WHEN excluded.state = 'offered' AND l.state = 'bound'
                                    AND l.client = excluded.client AND l.expires > at
                               THEN l.expires ELSE excluded.expires END,
                server = excluded.server, updated_at = now()
            WHERE l.client = excluded.client OR l.state = 'free' OR l.expires <= at
            RETURNING true INTO taken;
            IF taken IS NULL THEN
                RETURN QUERY SELECT i, l.address, l.client, l.mac, l.client_id, l.hostname,
                                    l.state, l.expires
                    FROM dhcp_leases l WHERE l.address = a;
            ELSIF kind = 'bind' THEN
                -- One address per client: its binding or offer elsewhere ends.
                UPDATE dhcp_leases SET state = 'free', expires = at, server = by_server,
                                       updated_at = now()
                    WHERE client = k AND address <> a AND state IN ('bound', 'offered')
                      AND expires > at;
            END IF;
        ELSIF kind = 'free' THEN
            UPDATE dhcp_leases SET state = 'free', expires = (o->>'e')::double precision,
                                   server = by_server, updated_at = now()
                WHERE address = a AND client = k AND state IN ('bound', 'offered');
        ELSIF kind = 'withdraw' THEN
            -- The client chose another server: only an offer ends here.
            UPDATE dhcp_leases SET state = 'free', expires = (o->>'e')::double precision,
                                   server = by_server, updated_at = now()
                WHERE address = a AND client = k AND state = 'offered';
        ELSIF kind = 'decline' THEN
            INSERT INTO dhcp_leases AS l (address, client, state, expires, server)
            VALUES (a, NULL, 'declined', (o->>'e')::double precision, by_server)
            ON CONFLICT (address) DO UPDATE SET
                client = NULL, mac = NULL, client_id = NULL, hostname = NULL,
                state = 'declined', expires = excluded.expires, server = excluded.server,
                updated_at = now()
            WHERE l.client = k OR l.state = 'free' OR l.expires <= at;
        ELSIF kind = 'find' THEN
            RETURN QUERY SELECT i, l.address, l.client, l.mac, l.client_id, l.hostname,
                                l.state, l.expires
                FROM dhcp_leases l
                WHERE l.client = k AND l.state = 'bound' AND l.expires > at
                ORDER BY l.expires DESC LIMIT 1;
        END IF;
    END LOOP;
END
$$;
