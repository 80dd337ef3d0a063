-- 012_sender: the floor's write also drops the rows of destinations
-- that answer again and are past it, idle (src/ngx_http_matrix_sender.c):
-- a row left behind would hold the outbox (matrix_federation_trim()).

DROP FUNCTION matrix_federation_floor(bigint);

CREATE FUNCTION matrix_federation_floor(p_floor bigint, p_caught_up text[])
RETURNS void
LANGUAGE sql
AS $fn$
    UPDATE federation_floor SET seq = p_floor WHERE seq < p_floor;
    DELETE FROM destinations d
     WHERE d.server_name = ANY (p_caught_up)
       AND d.failures = 0 AND NOT d.given_up;
    SELECT matrix_federation_trim();
$fn$;
