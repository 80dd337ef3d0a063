/*
 * Routing: the route tables of all endpoint files are compiled once, at
 * configuration time, into a tree of path segments.  A request walks the
 * tree segment by segment (literal children first, then a parameter),
 * so the cost of routing does not grow with the number of routes.
 */


#include "ngx_http_matrix_router.h"


struct ngx_http_matrix_route_node_s {
    ngx_str_t                        segment;    /* empty for a parameter */
    ngx_array_t                      children;   /* route_node_t *  */
    ngx_http_matrix_route_node_t    *param;
    ngx_array_t                      routes;     /* const route_t * */
    ngx_uint_t                       methods;    /* of all routes here */
};


typedef struct {
    ngx_str_t                        segments[NGX_HTTP_MATRIX_MAX_SEGMENTS];
    ngx_uint_t                       nsegments;
    ngx_uint_t                       params[NGX_HTTP_MATRIX_MAX_SEGMENTS];
    ngx_uint_t                       nparams;
} ngx_http_matrix_path_t;


static ngx_http_matrix_route_node_t *ngx_http_matrix_node_create(
    ngx_pool_t *pool);
static ngx_int_t ngx_http_matrix_route_add(ngx_conf_t *cf,
    ngx_http_matrix_route_node_t *root, const ngx_http_matrix_route_t *route);
static ngx_int_t ngx_http_matrix_path_split(ngx_str_t *path,
    ngx_http_matrix_path_t *split);
static ngx_http_matrix_route_node_t *ngx_http_matrix_node_match(
    ngx_http_matrix_route_node_t *node, ngx_http_matrix_path_t *path,
    ngx_uint_t i);
static ngx_int_t ngx_http_matrix_path_normalised(ngx_http_request_t *r,
    ngx_str_t *path);
static ngx_int_t ngx_http_matrix_set_allow(ngx_http_request_t *r,
    ngx_uint_t methods);


static ngx_http_matrix_route_t  *ngx_http_matrix_route_tables[] = {
    ngx_http_matrix_keys_routes,
    ngx_http_matrix_discovery_routes,
    ngx_http_matrix_profile_routes,
    ngx_http_matrix_notary_routes,
    ngx_http_matrix_devices_routes,
    ngx_http_matrix_membership_routes,
    ngx_http_matrix_events_routes,
    ngx_http_matrix_invite_routes,
    ngx_http_matrix_directory_routes,
    ngx_http_matrix_send_routes,
    NULL
};


static struct {
    ngx_uint_t    method;
    ngx_str_t     name;
} ngx_http_matrix_method_names[] = {
    { NGX_HTTP_GET,     ngx_string("GET") },
    { NGX_HTTP_HEAD,    ngx_string("HEAD") },
    { NGX_HTTP_POST,    ngx_string("POST") },
    { NGX_HTTP_PUT,     ngx_string("PUT") },
    { NGX_HTTP_DELETE,  ngx_string("DELETE") },
    { NGX_HTTP_OPTIONS, ngx_string("OPTIONS") },
    { 0, ngx_null_string }
};


ngx_int_t
ngx_http_matrix_routes_init(ngx_conf_t *cf, ngx_http_matrix_main_conf_t *mmcf)
{
    ngx_http_matrix_route_t  **table, *route;

    mmcf->routes = ngx_http_matrix_node_create(cf->pool);
    if (mmcf->routes == NULL) {
        return NGX_ERROR;
    }

    for (table = ngx_http_matrix_route_tables; *table; table++) {
        for (route = *table; route->handler; route++) {
            if (ngx_http_matrix_route_add(cf, mmcf->routes, route)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    return NGX_OK;
}


static ngx_http_matrix_route_node_t *
ngx_http_matrix_node_create(ngx_pool_t *pool)
{
    ngx_http_matrix_route_node_t  *node;

    node = ngx_pcalloc(pool, sizeof(ngx_http_matrix_route_node_t));
    if (node == NULL) {
        return NULL;
    }

    if (ngx_array_init(&node->children, pool, 4,
                       sizeof(ngx_http_matrix_route_node_t *))
        != NGX_OK)
    {
        return NULL;
    }

    if (ngx_array_init(&node->routes, pool, 1,
                       sizeof(ngx_http_matrix_route_t *))
        != NGX_OK)
    {
        return NULL;
    }

    return node;
}


static ngx_int_t
ngx_http_matrix_route_add(ngx_conf_t *cf, ngx_http_matrix_route_node_t *root,
    const ngx_http_matrix_route_t *route)
{
    ngx_str_t                       path, *seg;
    ngx_uint_t                      i, j;
    ngx_http_matrix_path_t          split;
    ngx_http_matrix_route_node_t   *node, **child, *next;
    const ngx_http_matrix_route_t **r;

    path = route->path;

    if (ngx_http_matrix_path_split(&path, &split) != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "matrix: invalid route \"%V\"", &route->path);
        return NGX_ERROR;
    }

    node = root;

    for (i = 0; i < split.nsegments; i++) {
        seg = &split.segments[i];

        if (seg->len > 2 && seg->data[0] == '{'
            && seg->data[seg->len - 1] == '}')
        {
            if (node->param == NULL) {
                node->param = ngx_http_matrix_node_create(cf->pool);
                if (node->param == NULL) {
                    return NGX_ERROR;
                }
            }

            node = node->param;
            continue;
        }

        next = NULL;
        child = node->children.elts;

        for (j = 0; j < node->children.nelts; j++) {
            if (child[j]->segment.len == seg->len
                && ngx_memcmp(child[j]->segment.data, seg->data, seg->len)
                   == 0)
            {
                next = child[j];
                break;
            }
        }

        if (next == NULL) {
            next = ngx_http_matrix_node_create(cf->pool);
            if (next == NULL) {
                return NGX_ERROR;
            }

            next->segment = *seg;

            child = ngx_array_push(&node->children);
            if (child == NULL) {
                return NGX_ERROR;
            }

            *child = next;
        }

        node = next;
    }

    if (node->methods & route->methods) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "matrix: route \"%V\" is defined twice",
                           &route->path);
        return NGX_ERROR;
    }

    r = ngx_array_push(&node->routes);
    if (r == NULL) {
        return NGX_ERROR;
    }

    *r = route;
    node->methods |= route->methods;

    return NGX_OK;
}


/*
 * Splits "/a/b/c" into its segments.  The raw (still percent-encoded)
 * path is split, so that an encoded "/" inside a room or event ID stays
 * inside its segment.
 */

static ngx_int_t
ngx_http_matrix_path_split(ngx_str_t *path, ngx_http_matrix_path_t *split)
{
    u_char  *p, *last, *start;

    split->nsegments = 0;
    split->nparams = 0;

    if (path->len == 0 || path->data[0] != '/') {
        return NGX_DECLINED;
    }

    p = path->data + 1;
    last = path->data + path->len;

    for ( ;; ) {
        if (split->nsegments == NGX_HTTP_MATRIX_MAX_SEGMENTS) {
            return NGX_DECLINED;
        }

        start = p;

        while (p < last && *p != '/') {
            p++;
        }

        split->segments[split->nsegments].data = start;
        split->segments[split->nsegments].len = p - start;
        split->nsegments++;

        if (p == last) {
            return NGX_OK;
        }

        p++;
    }
}


static ngx_http_matrix_route_node_t *
ngx_http_matrix_node_match(ngx_http_matrix_route_node_t *node,
    ngx_http_matrix_path_t *path, ngx_uint_t i)
{
    ngx_str_t                      *seg;
    ngx_uint_t                      j;
    ngx_http_matrix_route_node_t  **child, *found;

    if (i == path->nsegments) {
        return node->routes.nelts ? node : NULL;
    }

    seg = &path->segments[i];
    child = node->children.elts;

    for (j = 0; j < node->children.nelts; j++) {
        if (child[j]->segment.len == seg->len
            && ngx_memcmp(child[j]->segment.data, seg->data, seg->len) == 0)
        {
            found = ngx_http_matrix_node_match(child[j], path, i + 1);
            if (found) {
                return found;
            }

            break;
        }
    }

    if (node->param && seg->len) {
        path->params[path->nparams++] = i;

        found = ngx_http_matrix_node_match(node->param, path, i + 1);
        if (found) {
            return found;
        }

        path->nparams--;
    }

    return NULL;
}


ngx_int_t
ngx_http_matrix_route_request(ngx_http_request_t *r)
{
    u_char                         *dst, *src;
    ngx_str_t                       path, *seg;
    ngx_int_t                       rc;
    ngx_uint_t                      i, method;
    ngx_http_matrix_ctx_t          *ctx;
    ngx_http_matrix_path_t          split;
    ngx_http_matrix_main_conf_t    *mmcf;
    ngx_http_matrix_route_node_t   *node;
    const ngx_http_matrix_route_t **routes, *route;

    mmcf = ngx_http_get_module_main_conf(r, ngx_http_matrix_module);

    if (r->valid_unparsed_uri && !r->internal) {
        path.data = r->unparsed_uri.data;
        path.len = r->args_start ? (size_t) (r->args_start - 1 - path.data)
                                 : r->unparsed_uri.len;

        /*
         * nginx chose the location (and its deny, limit_req, ...) by the
         * normalised r->uri; a raw path that normalises to something else
         * ("..", "//", "%2e") would be routed past those rules.
         */
        rc = ngx_http_matrix_path_normalised(r, &path);

        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (rc != NGX_OK) {
            return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                              "M_UNRECOGNIZED",
                                              "Unrecognized request");
        }

    } else {
        path = r->uri;
    }

    node = NULL;

    if (ngx_http_matrix_path_split(&path, &split) == NGX_OK) {
        node = ngx_http_matrix_node_match(mmcf->routes, &split, 0);
    }

    if (node == NULL) {
        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_FOUND,
                                          "M_UNRECOGNIZED",
                                          "Unrecognized request");
    }

    /* HEAD is answered by the GET handler; nginx drops the body */
    method = (r->method == NGX_HTTP_HEAD) ? NGX_HTTP_GET : r->method;

    route = NULL;
    routes = node->routes.elts;

    for (i = 0; i < node->routes.nelts; i++) {
        if (routes[i]->methods & method) {
            route = routes[i];
            break;
        }
    }

    if (route == NULL) {
        if (ngx_http_matrix_set_allow(r, node->methods) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (r->method == NGX_HTTP_OPTIONS) {
            /* CORS preflight: the spec forbids running the endpoint */
            return ngx_http_matrix_send_body(r, NGX_HTTP_NO_CONTENT, NULL, 0);
        }

        return ngx_http_matrix_send_error(r, NGX_HTTP_NOT_ALLOWED,
                                          "M_UNRECOGNIZED",
                                          "Method not allowed");
    }

    ctx = ngx_http_matrix_get_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->route = route;

    for (i = 0; i < split.nparams; i++) {
        seg = &split.segments[split.params[i]];

        dst = ngx_pnalloc(r->pool, seg->len);
        if (dst == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ctx->params[i].data = dst;
        src = seg->data;
        ngx_unescape_uri(&dst, &src, seg->len, 0);
        ctx->params[i].len = dst - ctx->params[i].data;
    }

    ctx->nparams = split.nparams;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "matrix route: \"%V\" for \"%V\"", &route->path, &path);

    if (route->flags & NGX_HTTP_MATRIX_FEDERATION) {
        return ngx_http_matrix_federation_auth(r, ctx);
    }

    rc = route->handler(r, ctx);

    return rc;
}


/*
 * NGX_OK if the raw path, percent-decoded, is the path nginx matched the
 * location with: no dot segments, no doubled slashes, nothing decoded
 * that nginx would have merged.
 */

static ngx_int_t
ngx_http_matrix_path_normalised(ngx_http_request_t *r, ngx_str_t *path)
{
    u_char  *dst, *src, *decoded;

    if (path->len < r->uri.len) {
        return NGX_DECLINED;
    }

    /* the common case: nothing to decode, nothing normalised */
    if (path->len == r->uri.len
        && ngx_memcmp(path->data, r->uri.data, path->len) == 0)
    {
        return NGX_OK;
    }

    decoded = ngx_pnalloc(r->pool, path->len);
    if (decoded == NULL) {
        return NGX_ERROR;
    }

    dst = decoded;
    src = path->data;
    ngx_unescape_uri(&dst, &src, path->len, 0);

    if ((size_t) (dst - decoded) != r->uri.len
        || ngx_memcmp(decoded, r->uri.data, r->uri.len) != 0)
    {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_matrix_set_allow(ngx_http_request_t *r, ngx_uint_t methods)
{
    u_char      *p;
    size_t       len;
    ngx_str_t    value;
    ngx_uint_t   i;

    methods |= NGX_HTTP_OPTIONS;

    if (methods & NGX_HTTP_GET) {
        methods |= NGX_HTTP_HEAD;
    }

    len = 0;

    for (i = 0; ngx_http_matrix_method_names[i].method; i++) {
        if (methods & ngx_http_matrix_method_names[i].method) {
            len += ngx_http_matrix_method_names[i].name.len + sizeof(", ") - 1;
        }
    }

    value.data = ngx_pnalloc(r->pool, len);
    if (value.data == NULL) {
        return NGX_ERROR;
    }

    p = value.data;

    for (i = 0; ngx_http_matrix_method_names[i].method; i++) {
        if (methods & ngx_http_matrix_method_names[i].method) {
            if (p != value.data) {
                *p++ = ',';
                *p++ = ' ';
            }

            p = ngx_copy(p, ngx_http_matrix_method_names[i].name.data,
                         ngx_http_matrix_method_names[i].name.len);
        }
    }

    value.len = p - value.data;

    return ngx_http_matrix_add_header(r, "Allow", &value);
}


ngx_http_matrix_ctx_t *
ngx_http_matrix_get_ctx(ngx_http_request_t *r)
{
    ngx_http_matrix_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_matrix_module);

    if (ctx == NULL) {
        ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_matrix_ctx_t));
        if (ctx == NULL) {
            return NULL;
        }

        ctx->mscf = ngx_http_get_module_srv_conf(r, ngx_http_matrix_module);

        ngx_http_set_ctx(r, ctx, ngx_http_matrix_module);
    }

    return ctx;
}
