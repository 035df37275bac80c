-- Sample data and a least-privilege role for pgcdc (see the README:
-- "Attach to your own database").
CREATE TABLE permits (
    id         bigserial PRIMARY KEY,
    address    text NOT NULL,
    status     text NOT NULL DEFAULT 'submitted',
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO permits (address, status) VALUES
    ('12 Harbour Road', 'submitted'),
    ('3 Mill Lane', 'under_review');

CREATE ROLE pgcdc WITH LOGIN REPLICATION PASSWORD 'pgcdc';
GRANT SELECT ON permits TO pgcdc;
-- pgcdc creates its publication for the configured tables when it is missing;
-- a role that does not own the table cannot, so the owner creates it here.
CREATE PUBLICATION pgcdc FOR TABLE permits;
