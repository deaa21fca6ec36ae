// status_srv.c: /status, /metrics and the cluster page of a training peer. The snapshot and the
// history ring are guarded by mu: the trainer thread writes them (status_srv_publish), the
// daemon thread copies them out; both hold mu only for a memcpy.
#include "train/cmd/status_srv.h"

#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "infer/http.h"
#include "train/base/err.h"

struct status_srv {
    http_server *http;
    pthread_mutex_t mu;
    status_snap snap;               // mu
    status_point hist[STATUS_HIST]; // mu: a ring, n_hist points ending before head
    int head, n_hist;
};

// num is a JSON number, or null for NAN and infinities (JSON has neither).
static json_t *num(double v) { return isfinite(v) ? json_real(v) : json_null(); }

// sync_metric returns the sync metric called name, or NAN when no module reports it.
static double sync_metric(const train_sync_metrics *m, const char *name) {
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->metrics[i].name, name)) return m->metrics[i].value;
    return NAN;
}

char *status_json(const status_snap *s, const status_point *hist, int n) {
    const train_sync_metrics *m = &s->sync;
    json_t *o = json_object();
    char id[32];
    snprintf(id, sizeof id, "%016" PRIx64, m->member_id);
    json_object_set_new(o, "member", m->member_id ? json_string(id) : json_null());
    json_object_set_new(o, "rank", json_integer(s->rank));
    json_object_set_new(o, "world", json_integer(s->world));
    json_object_set_new(o, "step", json_integer(s->step));
    json_object_set_new(o, "max_iters", json_integer(s->max_iters));
    json_object_set_new(o, "loss", s->step ? num(s->loss) : json_null());
    json_object_set_new(o, "lr", s->step ? num(s->lr) : json_null());
    json_object_set_new(o, "grad_norm", s->step ? num(s->norm) : json_null());
    json_object_set_new(o, "val_loss", num(s->val_loss));
    json_object_set_new(o, "val_step",
                        isfinite(s->val_loss) ? json_integer(s->val_step) : json_null());
    json_object_set_new(o, "tok_s", s->step ? num(s->tok_s) : json_null());
    json_object_set_new(o, "elapsed_s", num(s->elapsed_s));
    json_object_set_new(o, "members", json_integer(m->members ? m->members : 1));
    json_object_set_new(o, "peers", json_integer(m->peers_connected));
    json_object_set_new(o, "epoch", json_integer((json_int_t)m->epoch));
    json_object_set_new(o, "exchanges", json_integer((json_int_t)m->exchanges));
    json_object_set_new(o, "bytes_sent", json_integer((json_int_t)m->bytes_sent));
    json_object_set_new(o, "bytes_recv", json_integer((json_int_t)m->bytes_recv));
    json_object_set_new(o, "msgs_dropped", json_integer((json_int_t)m->msgs_dropped));
    json_object_set_new(o, "stale_mean", num(sync_metric(m, "sparta_stale_mean")));
    json_object_set_new(o, "stale_max", num(sync_metric(m, "sparta_stale_max")));
    if (s->ckpt[0])
        json_object_set_new(o, "ckpt",
                            json_pack("{s:s, s:i}", "path", s->ckpt, "step", s->ckpt_step));
    else
        json_object_set_new(o, "ckpt", json_null());
    json_t *mo = json_object();
    for (int i = 0; i < m->n; i++)
        json_object_set_new(mo, m->metrics[i].name, num(m->metrics[i].value));
    json_object_set_new(o, "metrics", mo);
    json_t *hs = json_array(), *hl = json_array(), *hv = json_array(), *hb = json_array();
    for (int i = 0; i < n; i++) {
        json_array_append_new(hs, json_integer(hist[i].step));
        json_array_append_new(hl, num(hist[i].loss));
        json_array_append_new(hv, num(hist[i].val_loss));
        json_array_append_new(hb, json_integer((json_int_t)hist[i].bytes));
    }
    json_object_set_new(
        o, "history",
        json_pack("{s:o, s:o, s:o, s:o}", "step", hs, "loss", hl, "val_loss", hv, "bytes", hb));
    char *text = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(7));
    json_decref(o);
    if (!text) err_oom("status JSON", 0);
    char *out = xstrdup(text); // ours to free with free(), whatever jansson's allocator
    free(text);
    return out;
}

// A growing text buffer for the Prometheus page.
typedef struct {
    char *buf;
    size_t len, cap;
} text;

static void put(text *t, const char *name, const char *help, const char *type, int rank, double v) {
    char line[512];
    int n = snprintf(line, sizeof line, "# HELP %s %s\n# TYPE %s %s\n%s{rank=\"%d\"} %.10g\n", name,
                     help, name, type, name, rank, v);
    if (n < 0 || (size_t)n >= sizeof line) return;
    if (t->len + (size_t)n + 1 > t->cap) {
        t->cap = 2 * (t->len + (size_t)n) + 1024;
        t->buf = xrealloc(t->buf, t->cap);
    }
    memcpy(t->buf + t->len, line, (size_t)n + 1);
    t->len += (size_t)n;
}

char *status_prometheus(const status_snap *s) {
    const train_sync_metrics *m = &s->sync;
    text t = {0};
    int r = s->rank;
    put(&t, "spartan_train_step", "optimizer steps completed", "gauge", r, s->step);
    put(&t, "spartan_train_max_iters", "the run's last step", "gauge", r, s->max_iters);
    put(&t, "spartan_train_loss", "train loss of the last step", "gauge", r, s->loss);
    put(&t, "spartan_train_val_loss", "the last val loss", "gauge", r, s->val_loss);
    put(&t, "spartan_train_lr", "learning rate of the last step", "gauge", r, s->lr);
    put(&t, "spartan_train_grad_norm", "gradient norm of the last step", "gauge", r, s->norm);
    put(&t, "spartan_train_tokens_per_second", "tokens/s of the last step", "gauge", r, s->tok_s);
    put(&t, "spartan_train_elapsed_seconds", "seconds since the loop started", "gauge", r,
        s->elapsed_s);
    put(&t, "spartan_train_ckpt_step", "step of the last checkpoint (-1: none)", "gauge", r,
        s->ckpt[0] ? s->ckpt_step : -1);
    put(&t, "spartan_net_world", "ranks the group may hold", "gauge", r, s->world);
    put(&t, "spartan_net_members", "members of the group's view", "gauge", r,
        m->members ? m->members : 1);
    put(&t, "spartan_net_peers_connected", "other members linked now", "gauge", r,
        m->peers_connected);
    put(&t, "spartan_net_epoch", "membership epoch", "gauge", r, (double)m->epoch);
    put(&t, "spartan_net_exchanges_total", "exchanges with another peer", "counter", r,
        (double)m->exchanges);
    put(&t, "spartan_net_bytes_sent_total", "message bytes sent", "counter", r,
        (double)m->bytes_sent);
    put(&t, "spartan_net_bytes_recv_total", "message bytes received", "counter", r,
        (double)m->bytes_recv);
    put(&t, "spartan_net_msgs_dropped_total", "messages refused", "counter", r,
        (double)m->msgs_dropped);
    for (int i = 0; i < m->n; i++) {
        char name[128];
        snprintf(name, sizeof name, "spartan_%s", m->metrics[i].name);
        put(&t, name, "sync module metric", "gauge", r, m->metrics[i].value);
    }
    return t.buf ? t.buf : xstrdup("");
}

// take copies the snapshot and the history (oldest first) out; hist holds STATUS_HIST points.
static int take(status_srv *s, status_snap *snap, status_point *hist) {
    pthread_mutex_lock(&s->mu);
    *snap = s->snap;
    int n = s->n_hist;
    for (int i = 0; i < n; i++)
        hist[i] = s->hist[(s->head - n + i + STATUS_HIST) % STATUS_HIST];
    pthread_mutex_unlock(&s->mu);
    return n;
}

static void get_status(void *arg, const http_request *rq, http_reply *out) {
    (void)rq;
    status_snap snap;
    status_point *hist = xmalloc(STATUS_HIST * sizeof *hist);
    int n = take(arg, &snap, hist);
    out->body = status_json(&snap, hist, n);
    out->ctype = "application/json";
    free(hist);
}

static void get_metrics(void *arg, const http_request *rq, http_reply *out) {
    (void)rq;
    status_srv *s = arg;
    status_snap snap;
    pthread_mutex_lock(&s->mu);
    snap = s->snap;
    pthread_mutex_unlock(&s->mu);
    out->body = status_prometheus(&snap);
    out->ctype = "text/plain; version=0.0.4";
}

static void get_page(void *arg, const http_request *rq, http_reply *out) {
    (void)arg;
    (void)rq;
    out->body = xstrdup(status_cluster_page);
    out->ctype = "text/html; charset=utf-8";
}

int status_srv_create(status_srv **out, const char *host, int port) {
    status_srv *s = xcalloc(1, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    s->snap.world = 1;
    s->snap.val_loss = NAN;
    s->snap.ckpt_step = -1;
    const http_route routes[] = {
        {"/status", get_status, s, 1},
        {"/metrics", get_metrics, s, 1},
        {"/", get_page, s, 0},
    };
    const http_opts o = {.host = host,
                         .port = port,
                         .routes = routes,
                         .n_routes = 3,
                         .max_body = 4096,
                         .tag = "status"};
    int rc = http_create(&s->http, &o);
    if (rc) {
        status_srv_destroy(s);
        return rc;
    }
    *out = s;
    return ERR_OK;
}

int status_srv_port(const status_srv *s) { return http_port(s->http); }

void status_srv_publish(status_srv *s, const status_snap *snap) {
    pthread_mutex_lock(&s->mu);
    s->snap = *snap;
    status_point *last = s->n_hist ? &s->hist[(s->head + STATUS_HIST - 1) % STATUS_HIST] : NULL;
    int val_now = isfinite(snap->val_loss) && snap->val_step == snap->step;
    if (snap->step > 0 && (!last || snap->step > last->step)) {
        s->hist[s->head] = (status_point){snap->step, snap->loss, val_now ? snap->val_loss : NAN,
                                          snap->sync.bytes_sent + snap->sync.bytes_recv};
        s->head = (s->head + 1) % STATUS_HIST;
        if (s->n_hist < STATUS_HIST) s->n_hist++;
    } else if (last && val_now && snap->step == last->step) {
        last->val_loss = snap->val_loss;
    }
    pthread_mutex_unlock(&s->mu);
}

void status_srv_destroy(status_srv *s) {
    if (!s) return;
    http_destroy(s->http); // no callback runs after this
    pthread_mutex_destroy(&s->mu);
    free(s);
}
