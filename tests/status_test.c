// status_test.c: the HTTP layer (infer/http.h) with real requests to an ephemeral port on
// 127.0.0.1, the status server's /status and /metrics with published snapshots, and the
// net.status_port config key.
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/fetch.h"
#include "infer/http.h"
#include "train/base/cfg.h"
#include "train/base/err.h"
#include "train/cmd/status_srv.h"

TestSuite(status, .timeout = 30);

static void hello(void *arg, const http_request *rq, http_reply *out) {
    const char *who = http_query(rq, "who");
    char b[128];
    snprintf(b, sizeof b, "%s %s", (const char *)arg, who ? who : "-");
    out->body = xstrdup(b);
}

static void teapot(void *arg, const http_request *rq, http_reply *out) {
    (void)arg;
    (void)rq;
    out->status = 418;
    out->ctype = "application/json";
    out->body = xstrdup("{}");
}

static char *get(int port, const char *path, long *code) {
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    char *body = NULL;
    int rc = fetch_get(url, 5000, 1 << 20, &body, NULL, code);
    cr_assert_eq(rc, ERR_OK, "%s: %s", url, err_msg());
    return body;
}

Test(status, http_routes_queries_and_errors) {
    const http_route routes[] = {{"/hello", hello, "hi", 0}, {"/tea", teapot, NULL, 1}};
    http_server *s = NULL;
    http_opts o = {.port = 0, .routes = routes, .n_routes = 2};
    cr_assert_eq(http_create(&s, &o), ERR_OK, "%s", err_msg());
    int port = http_port(s);
    cr_assert(port > 0);
    long code = 0;
    char *b = get(port, "/hello?who=you", &code);
    cr_assert_eq(code, 200);
    cr_assert_str_eq(b, "hi you");
    free(b);
    b = get(port, "/tea", &code);
    cr_assert_eq(code, 418);
    cr_assert_str_eq(b, "{}");
    free(b);
    b = get(port, "/nothing", &code);
    cr_assert_eq(code, 404);
    free(b);
    // POST with a body: 405; a body above max_body: 413 (curl on the command line)
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "curl -s -o /dev/null -w '%%{http_code}' -X POST -d x http://127.0.0.1:%d/hello",
             port);
    FILE *p = popen(cmd, "r");
    char out[16] = "";
    cr_assert(fgets(out, sizeof out, p) != NULL);
    pclose(p);
    cr_assert_str_eq(out, "405");
    snprintf(cmd, sizeof cmd,
             "head -c 100000 /dev/zero | curl -s -o /dev/null -w '%%{http_code}' -X GET "
             "--data-binary @- http://127.0.0.1:%d/hello",
             port);
    p = popen(cmd, "r");
    out[0] = 0;
    cr_assert(fgets(out, sizeof out, p) != NULL);
    pclose(p);
    cr_assert_str_eq(out, "413");
    http_destroy(s);
}

Test(status, http_port_in_use_names_address_and_reason) {
    http_server *a = NULL, *b = NULL;
    http_opts o = {.host = "127.0.0.1"};
    cr_assert_eq(http_create(&a, &o), ERR_OK, "%s", err_msg());
    o.port = http_port(a);
    cr_assert_eq(http_create(&b, &o), ERR_NET);
    char want[128];
    snprintf(want, sizeof want, "cannot listen on 127.0.0.1:%d: Address already in use", o.port);
    cr_assert(strstr(err_msg(), want), "got: %s", err_msg());
    http_destroy(a);
    o.host = "no-such-host.invalid";
    o.port = 0;
    cr_assert_eq(http_create(&b, &o), ERR_NET);
    cr_assert(strstr(err_msg(), "cannot listen on no-such-host.invalid:0: "), "%s", err_msg());
}

Test(status, status_json_and_metrics_show_published_steps) {
    status_srv *s = NULL;
    cr_assert_eq(status_srv_create(&s, "127.0.0.1", 0), ERR_OK, "%s", err_msg());
    int port = status_srv_port(s);
    status_snap snap = {.rank = 1, .world = 2, .max_iters = 1000, .val_loss = NAN, .ckpt_step = -1};
    for (int i = 1; i <= STATUS_HIST + 10; i++) {
        snap.step = i;
        snap.loss = 4.0f - i * 0.001f;
        snap.tok_s = 1234;
        snap.sync.bytes_sent = (uint64_t)i * 100;
        snap.sync.bytes_recv = (uint64_t)i * 50;
        snap.sync.member_id = 0xabcdef;
        snap.sync.epoch = 3;
        snap.sync.members = 2;
        snap.sync.peers_connected = 1;
        snap.sync.n = 0;
        train_sync_metric(&snap.sync, "sparta_stale_mean", "stale", 0.5, 3);
        train_sync_metric(&snap.sync, "sparta_stale_max", "stale_max", 2, 0);
        if (i == 500) {
            snap.val_loss = 3.25f;
            snap.val_step = i;
            snprintf(snap.ckpt, sizeof snap.ckpt, "run/ckpt_00000500.h5");
            snap.ckpt_step = 500;
        }
        status_srv_publish(s, &snap);
    }
    long code = 0;
    char *b = get(port, "/status", &code);
    cr_assert_eq(code, 200);
    json_error_t e;
    json_t *o = json_loads(b, 0, &e);
    cr_assert(o, "%s: %s", e.text, b);
    cr_assert_eq(json_integer_value(json_object_get(o, "step")), STATUS_HIST + 10);
    cr_assert_eq(json_integer_value(json_object_get(o, "rank")), 1);
    cr_assert_eq(json_integer_value(json_object_get(o, "world")), 2);
    cr_assert_eq(json_integer_value(json_object_get(o, "peers")), 1);
    cr_assert_eq(json_integer_value(json_object_get(o, "epoch")), 3);
    cr_assert_str_eq(json_string_value(json_object_get(o, "member")), "0000000000abcdef");
    cr_assert_float_eq(json_number_value(json_object_get(o, "val_loss")), 3.25, 1e-6);
    cr_assert_float_eq(json_number_value(json_object_get(o, "stale_mean")), 0.5, 1e-9);
    cr_assert_eq(json_integer_value(json_object_get(o, "bytes_sent")), (STATUS_HIST + 10) * 100);
    json_t *ck = json_object_get(o, "ckpt");
    cr_assert_str_eq(json_string_value(json_object_get(ck, "path")), "run/ckpt_00000500.h5");
    cr_assert_eq(json_integer_value(json_object_get(ck, "step")), 500);
    json_t *h = json_object_get(o, "history");
    json_t *steps = json_object_get(h, "step"), *vals = json_object_get(h, "val_loss");
    cr_assert_eq(json_array_size(steps), STATUS_HIST, "the ring keeps the last points");
    cr_assert_eq(json_integer_value(json_array_get(steps, 0)), 11);
    cr_assert_eq(json_integer_value(json_array_get(steps, STATUS_HIST - 1)), STATUS_HIST + 10);
    cr_assert(json_is_null(json_array_get(vals, 0)));
    cr_assert_float_eq(json_number_value(json_array_get(vals, 500 - 11)), 3.25, 1e-6);
    json_decref(o);
    free(b);

    // /metrics: every line a comment or `name{labels} value`
    b = get(port, "/metrics", &code);
    cr_assert_eq(code, 200);
    int samples = 0, step_ok = 0, stale_ok = 0;
    for (char *line = strtok(b, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#') continue;
        char name[128];
        double v;
        cr_assert_eq(sscanf(line, "%127[a-z_]{rank=\"1\"} %lf", name, &v), 2, "bad line '%s'",
                     line);
        samples++;
        step_ok |= !strcmp(name, "spartan_train_step") && v == STATUS_HIST + 10;
        stale_ok |= !strcmp(name, "spartan_sparta_stale_max") && v == 2;
    }
    cr_assert(samples >= 17 && step_ok && stale_ok, "%d samples", samples);
    free(b);
    b = get(port, "/", &code);
    cr_assert_eq(code, 200);
    cr_assert(strstr(b, "<svg id=\"loss\""));
    free(b);
    status_srv_destroy(s);
}

Test(status, bad_status_port_is_rejected_naming_the_key) {
    cfg c;
    cfg_defaults(&c);
    cr_assert_eq(c.net.status_port, 0, "off by default");
    cr_assert_str_eq(c.net.status_host, "127.0.0.1");
    cr_assert_neq(cfg_set(&c, "net.status_port=70000"), ERR_OK);
    cr_assert(strstr(err_msg(), "net.status_port"), "%s", err_msg());
    cr_assert_neq(cfg_set(&c, "net.status_port=abc"), ERR_OK);
    cr_assert(strstr(err_msg(), "net.status_port"), "%s", err_msg());
    cr_assert_eq(cfg_set(&c, "net.status_port=8090"), ERR_OK, "%s", err_msg());
    cr_assert_eq(c.net.status_port, 8090);
}
