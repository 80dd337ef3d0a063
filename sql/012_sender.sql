-- 012_sender: the floor's write also drops the rows of destinations
-- that answer again and are past it, idle (src/ngx_http_matrix_sender.c),
-- and those a former owner wrote after the current one read the rows:
-- a row left behind would hold the outbox (matrix_federation_trim()).

DROP FUNCTION matrix_federation_floor(bigint);

CREATE FUNCTION matrix_federation_floor(p_floor bigint, p_caught_up text[])
RETURNS void
LANGUAGE sql
AS $fn$
    UPDATE federation_floor SET seq = p_floor WHERE seq < p_floor;
    -- the owner knows them healthy: a row saying otherwise is a former
    -- owner's, written late
    DELETE FROM destinations d
     WHERE d.server_name = ANY (p_caught_up) AND NOT d.given_up;
    SELECT matrix_federation_trim();
$fn$;
