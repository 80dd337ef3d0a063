#!/usr/bin/env node
// Validates Matrix response (or request) bodies against the spec's
// resolved OpenAPI 3.1 bundles (../shared/spec/server-server.json and
// client-server.json), with ajv's JSON Schema 2020-12 dialect and
// ajv-formats. A long-lived process: one JSON object a line on stdin,
// one answer a line on stdout, in order.
//
//   node t/tools/spec_validate.js --spec DIR      (DIR holds the bundles)
//
// A question:
//   {"api": "server-server" | "client-server",
//    "method": "GET", "path": TEMPLATE or CONCRETE PATH (a query is cut),
//    "status": 200,                     (absent with "request": true)
//    "body": JSON VALUE  or  "body_text": "raw text, parsed here",
//    "request": true}                   (validate a request body instead)
// An answer:
//   {"ok": true|false, "errors": ["...", ...], "template": "/_matrix/...",
//    "schema": "spec" | "generic-error" | "none"}
//
// The bundles list full paths (/_matrix/federation/v1/...), not a base
// in "servers". A concrete path matches the templates with each {param}
// standing for one non-empty segment; where several match, the one with
// the most literal characters wins (/query/directory over
// /query/{queryType}). A status the operation does not declare is
// refused for 1xx-3xx; for 4xx/5xx the body must be a standard Matrix
// error ({"errcode": string, ...}), reported as schema "generic-error".
// A declared response without a JSON body schema is accepted as any JSON
// (schema "none").
//
// Ajv runs with strict: false, since the bundles carry OpenAPI and
// Matrix annotations that are not JSON Schema keywords (example,
// x-addedInMatrixVersion, ...). The Matrix string formats (mx-user-id,
// ...) are checked loosely, from the grammars in the spec's appendices.

'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const Ajv2020 = require('ajv/dist/2020');
const addFormats = require('ajv-formats');

function specDir() {
    const i = process.argv.indexOf('--spec');
    if (i >= 0 && process.argv[i + 1]) return process.argv[i + 1];
    if (process.env.MX_SPEC_DIR) return process.env.MX_SPEC_DIR;
    return path.join(__dirname, '..', '..', '..', 'shared', 'spec');
}

const ajv = new Ajv2020({ strict: false, allErrors: true,
                          logger: { log() {}, warn() {}, error: console.error } });
addFormats(ajv);

// appendices: identifier grammars (loose: historical IDs are allowed)
const SERVER_NAME = '(\\[[0-9A-Fa-f:.]+\\]|[0-9A-Za-z.-]+)(:[0-9]{1,5})?';
const FORMATS = {
    'mx-user-id': new RegExp('^@[^:]+:' + SERVER_NAME + '$'),
    'mx-room-id': new RegExp('^![^:]+(:' + SERVER_NAME + ')?$'),
    'mx-event-id': /^\$[^\s]+$/,
    'mx-room-alias': new RegExp('^#[^:]+:' + SERVER_NAME + '$'),
    'mx-server-name': new RegExp('^' + SERVER_NAME + '$'),
    'mx-mxc-uri': /^mxc:\/\/[^/]+\/[0-9A-Za-z_-]+$/,
    'mx-unpadded-base64': /^[A-Za-z0-9+/]*$/,
};
for (const [name, re] of Object.entries(FORMATS))
    ajv.addFormat(name, { type: 'string', validate: re });

const GENERIC_ERROR = {
    type: 'object',
    required: ['errcode'],
    properties: { errcode: { type: 'string' }, error: { type: 'string' } },
};

const apis = {};          // name -> {routes: [{template, re, literal, ops}]}
const compiled = new Map();

function loadApi(name) {
    if (apis[name]) return apis[name];
    if (!/^(server-server|client-server)$/.test(name))
        throw new Error('unknown api ' + JSON.stringify(name));
    const file = path.join(specDir(), name + '.json');
    const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
    const routes = Object.entries(doc.paths).map(([template, ops]) => {
        const t = template.trim();
        const parts = t.split(/(\{[^}]+\})/);
        const re = parts.map(p => /^\{/.test(p) ? '[^/]+'
            : p.replace(/[.*+?^$()|[\]\\]/g, '\\$&')).join('');
        const literal = parts.filter(p => !/^\{/.test(p)).join('').length;
        return { template: t, re: new RegExp('^' + re + '$'), literal, ops };
    });
    return (apis[name] = { routes });
}

function findRoute(api, p) {
    p = p.split('?')[0];
    const exact = api.routes.find(r => r.template === p);
    if (exact) return exact;
    let best = null;
    for (const r of api.routes)
        if (r.re.test(p) && (!best || r.literal > best.literal)) best = r;
    return best;
}

function validator(key, schema) {
    if (!compiled.has(key)) compiled.set(key, ajv.compile(schema));
    return compiled.get(key);
}

function errorText(e) {
    let s = (e.instancePath || '/') + ' ' + e.message;
    if (e.keyword === 'additionalProperties')
        s += ': ' + e.params.additionalProperty;
    else if (e.keyword === 'enum')
        s += ': ' + JSON.stringify(e.params.allowedValues);
    return s;
}

// {"api": NAME, "compile_all": true}: compiles every JSON body schema of
// the bundle (a check of the bundle and of this program):
// {ok, errors: [what did not compile], count}
function compileAll(name) {
    const errors = [];
    let count = 0;
    for (const r of loadApi(name).routes) {
        for (const [method, op] of Object.entries(r.ops)) {
            const bodies = Object.entries((op && op.responses) || {})
                .map(([status, resp]) => [status, resp.content]);
            if (op && op.requestBody) bodies.push(['request', op.requestBody.content]);
            for (const [where, c] of bodies) {
                const schema = c && c['application/json'] && c['application/json'].schema;
                if (!schema) continue;
                try {
                    validator(name + ' ' + method + ' ' + r.template + ' ' + where, schema);
                    count++;
                } catch (e) {
                    errors.push(method + ' ' + r.template + ' ' + where + ': ' + e.message);
                }
            }
        }
    }
    return { ok: errors.length === 0, errors, count };
}

function answer(q) {
    const fail = (msg) => ({ ok: false, errors: [msg] });
    if (!q || typeof q !== 'object') return fail('a question is an object');
    if (q.compile_all) return compileAll(q.api);
    const api = loadApi(q.api);
    if (typeof q.method !== 'string' || typeof q.path !== 'string')
        return fail('method and path are required');
    const route = findRoute(api, q.path);
    if (!route) return fail('no path of the ' + q.api + ' spec matches ' + q.path);
    const method = q.method.toLowerCase();
    const op = route.ops[method];
    const out = { template: route.template };
    if (!op) return Object.assign(out, fail('the spec has no ' + q.method + ' ' + route.template));

    let body = q.body;
    if (typeof q.body_text === 'string') {
        try {
            body = JSON.parse(q.body_text);
        } catch (e) {
            return Object.assign(out, fail('body is not JSON: ' + e.message));
        }
    }
    if (body === undefined) return Object.assign(out, fail('no body given'));

    let schema, where, source = 'spec';
    if (q.request) {
        const c = op.requestBody && op.requestBody.content;
        if (!c || !c['application/json'] || !c['application/json'].schema)
            return Object.assign(out, fail('the spec has no JSON request body for '
                                           + q.method + ' ' + route.template));
        schema = c['application/json'].schema;
        where = 'request';
    } else {
        const status = String(q.status);
        const resp = op.responses && op.responses[status];
        where = status;
        if (resp) {
            const c = resp.content;
            if (c && c['application/json'] && c['application/json'].schema)
                schema = c['application/json'].schema;
            else if (c)
                return Object.assign(out, fail('the spec gives ' + route.template
                    + ' ' + status + ' no JSON body (' + Object.keys(c).join(', ') + ')'));
        }
        if (!schema && Number(status) >= 400) {
            schema = GENERIC_ERROR;
            source = 'generic-error';
            where = 'error';
        } else if (!schema && resp) {
            return Object.assign(out, { ok: true, errors: [], schema: 'none' });
        } else if (!schema) {
            return Object.assign(out, fail('the spec declares no ' + status + ' for '
                                           + q.method + ' ' + route.template));
        }
    }
    const key = q.api + ' ' + method + ' ' + route.template + ' ' + where;
    const v = validator(key, schema);
    const ok = v(body);
    return Object.assign(out, { ok, errors: ok ? [] : v.errors.map(errorText),
                                schema: source });
}

const rl = readline.createInterface({ input: process.stdin, terminal: false });
rl.on('line', (line) => {
    if (!line.trim()) return;
    let out;
    try {
        out = answer(JSON.parse(line));
    } catch (e) {
        out = { ok: false, errors: ['spec_validate: ' + e.message] };
    }
    process.stdout.write(JSON.stringify(out) + '\n');
});
