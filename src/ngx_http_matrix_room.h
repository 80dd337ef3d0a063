/*
 * Silo rooms as Matrix rooms, for the federation routes that serve them:
 * a room looked up by its Matrix room ID, its events made the first time
 * a route needs them, the events this server adds, and stored events
 * turned back into PDUs.
 *
 * A route works on a room through an operation bound to its request: a
 * chain of steps, each a statement on the module's Postgres whose
 * outcome the next step reads (op->q->result).  A step returns NGX_DONE
 * when it has started the next statement, anything else finishes the
 * request with that code.
 */

#ifndef _NGX_HTTP_MATRIX_ROOM_H_INCLUDED_
#define _NGX_HTTP_MATRIX_ROOM_H_INCLUDED_


#include "ngx_http_matrix_router.h"
#include "ngx_http_matrix_pg.h"

#include <mx_event.h>
#include <mx_room.h>


/* the module's own user, which creates the rooms and holds them */
#define NGX_HTTP_MATRIX_SERVER_USER  "_matrix"


typedef struct ngx_http_matrix_room_op_s  ngx_http_matrix_room_op_t;

/* state events of a head: five of the room's, and the members asked
   about: a received transaction's senders and targets, two for each of
   its 50 PDUs and 30 events of gaps */
#define NGX_HTTP_MATRIX_HEAD_MAX  168


/* what a new event of the room needs (matrix_room_head()) */
typedef struct {
    json_t                         *prev_events;   /* array of event IDs */
    int64_t                         depth;
    mx_event_t                     *state[NGX_HTTP_MATRIX_HEAD_MAX];
    size_t                          nstate;

    /* in state, or NULL */
    mx_event_t                     *create;
    mx_event_t                     *power_levels;
    mx_event_t                     *join_rules;
    mx_event_t                     *server_acl;
    mx_event_t                     *history_visibility;
} ngx_http_matrix_room_head_t;

/*
 * Events made one after another: the first after prev (the room's
 * extremities; none for a new room's create event), each next one after
 * the one before, one deeper.
 */
typedef struct {
    json_t                         *records;   /* matrix_append_events() */
    json_t                         *prev;      /* array of event IDs */
    int64_t                         depth;     /* of the last one made */
    const char                     *redacts;   /* of the next one, then
                                                  cleared */
    char                            last[MX_EVENT_ID_LEN + 1];
} ngx_http_matrix_room_chain_t;


/* what a silo author's join is authorised by (event IDs) */
typedef struct {
    const char                     *create;
    const char                     *power_levels;
    const char                     *join_rules;
    const char                     *creator_member;
    ngx_str_t                       creator;   /* this server's user */
    unsigned                        is_public:1;
} ngx_http_matrix_room_authors_t;


typedef ngx_int_t (*ngx_http_matrix_room_step_pt)(ngx_http_request_t *r,
    ngx_http_matrix_room_op_t *op);


struct ngx_http_matrix_room_op_s {
    ngx_http_request_t             *r;             /* NULL: a background
                                                      op (the change feed),
                                                      which makes events
                                                      only */
    ngx_pool_t                     *pool;          /* r's, or the op's */
    ngx_log_t                      *log;
    ngx_http_matrix_ctx_t          *ctx;
    ngx_http_matrix_pg_query_t     *q;
    ngx_http_matrix_room_step_pt    next;
    void                           *data;          /* the route's */

    /* the room, once open */
    ngx_str_t                       room_id;
    ngx_str_t                       nid;           /* room_nid, as text */
    ngx_str_t                       silo_room_id;  /* empty: not the silo's */
    const mx_room_version_t        *version;
    unsigned                        created:1;

    /* private */
    ngx_http_matrix_room_step_pt    then;          /* once the room is open */
    ngx_http_matrix_room_step_pt    pending;       /* after BEGIN, COMMIT */
    unsigned                        create:1;
    unsigned                        counted:1;     /* r->main->count taken */
    void                           *making;        /* its events, while they
                                                      are made */
};


ngx_http_matrix_room_op_t *ngx_http_matrix_room_op(ngx_http_request_t *r,
    ngx_http_matrix_ctx_t *ctx);

/*
 * Opens the room: 404 M_NOT_FOUND if this server has no such room, and
 * with create, its events made if it has none yet.  The route returns
 * what this returns.
 */
ngx_int_t ngx_http_matrix_room_open(ngx_http_matrix_room_op_t *op,
    ngx_str_t *room_id, ngx_uint_t create, ngx_http_matrix_room_step_pt next);

/* one statement (values: n strings, NULL for SQL NULL), then next */
ngx_int_t ngx_http_matrix_room_run(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_pg_stmt_t *stmt, ngx_str_t *values, ngx_uint_t n,
    ngx_http_matrix_room_step_pt next);

/* the same for a statement of ($1 the room's nid, $2 v as JSON text) */
ngx_int_t ngx_http_matrix_room_run_json(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_pg_stmt_t *stmt, json_t *v,
    ngx_http_matrix_room_step_pt next);

/* a transaction on a connection of its own: BEGIN, ... COMMIT */
ngx_int_t ngx_http_matrix_room_begin(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_step_pt next);
ngx_int_t ngx_http_matrix_room_commit(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_step_pt next);

/* the room's head, with the member events of the users asked about */
ngx_int_t ngx_http_matrix_room_head(ngx_http_matrix_room_op_t *op,
    ngx_str_t *members, ngx_uint_t n, ngx_uint_t lock,
    ngx_http_matrix_room_step_pt next);

/* the head read by the last step, parsed; NULL on error (logged) */
ngx_http_matrix_room_head_t *ngx_http_matrix_room_head_get(
    ngx_http_matrix_room_op_t *op);

/* the same, of a matrix_room_head() document (borrowed) */
ngx_http_matrix_room_head_t *ngx_http_matrix_room_head_parse(
    ngx_http_matrix_room_op_t *op, json_t *doc);

/*
 * ev (an event kept with the op's pool) put in the head's state, in the
 * place of the event of its type and state key; NGX_ERROR: no room.
 */
ngx_int_t ngx_http_matrix_room_head_set(ngx_http_matrix_room_head_t *h,
    mx_event_t *ev);

/* a user's member event in the head, or NULL */
mx_event_t *ngx_http_matrix_room_head_member(ngx_http_matrix_room_head_t *h,
    ngx_str_t *user_id);

/*
 * The verified origin may read the room: one of its users is joined, and
 * the room's server ACL (if any) lets it in; else 403 M_FORBIDDEN.
 */
ngx_int_t ngx_http_matrix_room_access(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_step_pt next);

/* 400 M_INCOMPATIBLE_ROOM_VERSION naming the room's version */
ngx_int_t ngx_http_matrix_incompatible_version(ngx_http_request_t *r,
    const char *version);

/* 403 M_FORBIDDEN saying why, logged */
ngx_int_t ngx_http_matrix_forbidden(ngx_http_request_t *r,
    const char *fmt, ...);

/* the room's server ACL content (NULL: none) lets the origin in */
ngx_uint_t ngx_http_matrix_room_acl_allows(ngx_http_matrix_room_op_t *op,
    json_t *acl_content);

/* the room's events made now if it has none yet */
ngx_int_t ngx_http_matrix_room_make_events(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_step_pt next);

/* after work of its own (not a statement): NGX_DONE goes on, else ends */
void ngx_http_matrix_room_continue(ngx_http_matrix_room_op_t *op,
    ngx_int_t rc);

/* the first column of the first row of the last result, or NULL */
json_t *ngx_http_matrix_room_json(ngx_http_matrix_room_op_t *op);

/*
 * The PDUs of rows of matrix_event_parts() (the last result), as a JSON
 * array, events rebuilt from the silo included, row by row: a JSON null
 * for one that cannot be served (logged); NULL on error.  With ids,
 * their event IDs as well, in the same order.
 */
json_t *ngx_http_matrix_room_pdus(ngx_http_matrix_room_op_t *op,
    json_t **ids);

/*
 * Rows of matrix_event_parts() with a last column "part" (0: the state,
 * else its auth chain), the last result, as two arrays of PDUs (and the
 * state's event IDs, when state_ids is not NULL); unservable events left
 * out.  NGX_ERROR: out of memory.
 */
ngx_int_t ngx_http_matrix_room_state_parts(ngx_http_matrix_room_op_t *op,
    json_t **state, json_t **state_ids, json_t **chain);

/* the nulls of ngx_http_matrix_room_pdus() taken out */
void ngx_http_matrix_room_pdus_compact(json_t *pdus);

/*
 * Makes one event of this server's (parts filled but for the room ID),
 * signs it, and adds its row for matrix_append_events() to records;
 * event_id gets its ID.  With a recipe the event is kept as hash and
 * signature only (silo_message_id names its source), else whole.
 */
ngx_int_t ngx_http_matrix_room_make_event(ngx_http_matrix_room_op_t *op,
    mx_pdu_parts_t *parts, unsigned recipe, const char *silo_message_id,
    json_t *records, char *event_id);

/* the next event of a chain, made as ngx_http_matrix_room_make_event() */
ngx_int_t ngx_http_matrix_room_chain_event(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_chain_t *chain, const char *type,
    const char *state_key, const char *sender, json_t *content, int64_t ts,
    const char **auth, size_t nauth, unsigned recipe,
    const char *silo_message_id, char *event_id);

/*
 * A silo author's lazy join, in the chain: in a private room an invite by
 * this server's user first.  join gets the join's event ID, or "" for a
 * localpart this server cannot use (nothing made).
 */
ngx_int_t ngx_http_matrix_room_join_author(ngx_http_matrix_room_op_t *op,
    ngx_http_matrix_room_chain_t *chain, ngx_http_matrix_room_authors_t *a,
    const char *localpart, const char *name, const char *avatar, int64_t ts,
    char *join);

/*
 * A row of matrix_event_parts() kept as parts, made whole again (content
 * rebuilt, served redacted when it no longer gives the stored hash).
 */
json_t *ngx_http_matrix_event_rebuild(PGresult *res, int row,
    const char *server, const mx_room_version_t *version);

/* records the row of a PDU received whole (a remote join, say) */
ngx_int_t ngx_http_matrix_room_record(json_t *records, const mx_event_t *ev,
    const char *outbox, mx_err_t *err);

/* ev freed with pool (now, when the cleanup cannot be had: NGX_ERROR) */
ngx_int_t ngx_http_matrix_keep_event(ngx_pool_t *pool, mx_event_t *ev);

/*
 * The events an event cites as its auth events, from rows whose first
 * column is a stored PDU; kept with the op's pool.  NGX_ERROR: one could
 * not be read (err) or kept.
 */
ngx_int_t ngx_http_matrix_room_cited(ngx_http_matrix_room_op_t *op,
    PGresult *res, mx_event_t **events, mx_err_t *err);

/* "@localpart:server" of this server, on the request's pool */
ngx_int_t ngx_http_matrix_room_user(ngx_http_matrix_room_op_t *op,
    const char *localpart, ngx_str_t *user_id);

/* the server part of a user ID (after the first ':') */
ngx_int_t ngx_http_matrix_server_of(ngx_str_t *user_id, ngx_str_t *server);


#endif /* _NGX_HTTP_MATRIX_ROOM_H_INCLUDED_ */
