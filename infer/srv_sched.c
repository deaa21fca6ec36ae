// srv_sched.c: the scheduler thread, continuous batching. Each iteration admits queued requests
// into free KV slots, drops requests whose client went away, and runs one kv_step per loaded
// model over every active request of it: single-token decodes first, then prompt chunks (prefill)
// within the step's token budget. Each request whose logits are ready samples its next token
// (sample_next, draw index = tokens generated so far, as `spartan sample` does), checks
// end-of-text, stop strings, max_tokens and the end of the context, and hands the text that can
// no longer be part of a stop string to its connection. A stream with stream_buffer bytes still
// unsent is paused (skipped) until its client reads them, so a slow client bounds its own
// generation instead of growing its buffer; with nothing runnable the thread sleeps until a
// request, a reader or a hang-up wakes it. Only this thread calls kv_* and touches the
// "scheduler" fields of srv_req; it takes srv_server.mu only to exchange requests and bytes.
#include <stdlib.h>
#include <string.h>

#include "infer/srv_impl.h"
#include "train/base/err.h"
#include "train/base/log.h"
#include "train/base/sys.h"
#include "train/ops.h"

// gen_put appends n bytes to the request's generated text.
static void gen_put(srv_req *r, const char *p, size_t n) {
    if (r->gen_len + n + 1 > r->gen_cap) {
        r->gen_cap = 2 * (r->gen_len + n + 1) + 64;
        r->gen = xrealloc(r->gen, r->gen_cap);
    }
    memcpy(r->gen + r->gen_len, p, n);
    r->gen_len += n;
    r->gen[r->gen_len] = 0;
}

// cut_at_stop looks for the earliest stop string that ends in the bytes added since from and
// cuts the text before it. Returns 1 if one was found.
static int cut_at_stop(srv_req *r, size_t from) {
    size_t best = (size_t)-1;
    for (int i = 0; i < r->n_stop; i++) {
        size_t k = strlen(r->stop[i]);
        if (k > r->gen_len) continue;
        size_t start = from + 1 > k ? from + 1 - k : 0; // an occurrence must end after from
        for (size_t p = start; p + k <= r->gen_len && p < best; p++)
            if (!memcmp(r->gen + p, r->stop[i], k)) {
                best = p;
                break;
            }
    }
    if (best == (size_t)-1) return 0;
    r->gen_len = best;
    r->gen[best] = 0;
    return 1;
}

// on_logits samples the next token of r from logits(V) and updates its text and finish state.
static void on_logits(srv_server *s, srv_req *r, const float *logits) {
    srv_model *m = r->model;
    double now = sys_now_ms();
    int t = sample_next(logits, m->V, &r->sp, (uint64_t)r->n_gen, m->scratch);
    srv_metrics_token(&s->metrics, r->n_gen == 0 ? (now - r->t_arrive) / 1e3 : -1,
                      r->n_gen > 0 ? (now - r->t_last) / 1e3 : -1);
    srv_metrics_add(&s->metrics, SRV_M_TOKENS, 1);
    if (r->n_gen == 0) r->t_first = now;
    r->t_last = now;
    if (t == m->eot) {
        r->finish = "stop";
        return;
    }
    r->n_gen++;
    r->last = t;
    char *text = NULL;
    size_t len = 0, before = r->gen_len;
    if (tok_decode(m->tok, &r->last, 1, &text, &len) == ERR_OK) gen_put(r, text, len);
    free(text);
    if (r->gen_len > before && cut_at_stop(r, before))
        r->finish = "stop";
    else if (r->n_gen >= r->max_tokens || kv_slot_pos(m->kv, r->slot) >= m->T)
        r->finish = "length";
}

// held returns how many trailing unsent bytes of r could still start a stop string.
static size_t held(const srv_req *r) {
    size_t h = 0, unsent = r->gen_len - r->sent;
    for (int i = 0; i < r->n_stop; i++) {
        size_t k = strlen(r->stop[i]) - 1;
        if (k > unsent) k = unsent;
        for (; k > h; k--)
            if (!memcmp(r->gen + r->gen_len - k, r->stop[i], k)) break;
        if (k > h) h = k;
    }
    return h;
}

// chunk appends one stream event for gen[sent, end) to *ev (caller frees).
static void chunk(srv_server *s, srv_req *r, size_t end, const char *finish, char **ev,
                  size_t *ev_len) {
    size_t cn;
    char *clean = srv_utf8_clean(r->gen + r->sent, end - r->sent, &cn);
    char *e = srv_api_chunk(r, s->name, clean, cn, finish);
    free(clean);
    size_t n = strlen(e);
    *ev = xrealloc(*ev, *ev_len + n + 1);
    memcpy(*ev + *ev_len, e, n + 1);
    *ev_len += n;
    free(e);
    r->sent = end;
}

// emit formats what r can send now: stream events, or the whole body once finished.
static void emit(srv_server *s, srv_req *r, char **ev, size_t *ev_len) {
    if (!r->stream) {
        if (r->finish) {
            size_t cn;
            char *clean = srv_utf8_clean(r->gen, r->gen_len, &cn);
            *ev = srv_api_done(r, s->name, clean, cn);
            *ev_len = strlen(*ev);
            free(clean);
        }
        return;
    }
    if (!r->finish) {
        size_t end = r->gen_len - held(r);
        end = r->sent + srv_utf8_valid_prefix(r->gen + r->sent, end - r->sent);
        if (end > r->sent) chunk(s, r, end, NULL, ev, ev_len);
        return;
    }
    if (r->gen_len > r->sent) chunk(s, r, r->gen_len, NULL, ev, ev_len);
    chunk(s, r, r->gen_len, r->finish, ev, ev_len); // the last event carries the finish reason
}

// fail formats an error for r (a failed kv_step): an error event or a 500 body.
static void fail(srv_server *s, srv_req *r, const char *msg, char **ev, size_t *ev_len) {
    r->finish = "error";
    char *e = srv_api_error(r->ep, msg, "server_error");
    (void)s;
    if (!r->stream) {
        *ev = e;
        *ev_len = strlen(e);
        return;
    }
    size_t n = strlen(e);
    *ev = xmalloc(n + 32);
    if (r->ep == SRV_EP_GENERATE || r->ep == SRV_EP_OCHAT)
        *ev_len = (size_t)snprintf(*ev, n + 32, "%s\n", e);
    else
        *ev_len = (size_t)snprintf(*ev, n + 32, "data: %s\n\ndata: [DONE]\n\n", e);
    free(e);
}

typedef struct {
    srv_req **act; // (max_batch) active requests
    int na;
    char **ev;      // (max_batch) bytes to hand to each active request this iteration
    size_t *ev_len; // (max_batch)
    srv_req **idx;  // (max_batch) kv_step entry -> request
    struct MHD_Connection **resume;
} sched;

// step_model runs one kv_step over the active requests of model m and samples.
static void step_model(srv_server *s, sched *q, srv_model *m) {
    int n = 0, budget = m->budget;
    for (int pass = 0; pass < 2; pass++) // decodes first, then prompt chunks
        for (int i = 0; i < q->na; i++) {
            srv_req *r = q->act[i];
            if (r->model != m || r->paused || (pass == 0) != (r->fed == r->n_prompt) || budget <= 0)
                continue;
            int k = pass == 0 ? 1 : r->n_prompt - r->fed;
            if (k > budget) k = budget;
            m->slots[n] = r->slot;
            m->tp[n] = pass == 0 ? &r->last : r->prompt + r->fed;
            m->ntok[n] = k;
            q->idx[n++] = r;
            budget -= k;
        }
    if (n == 0) return;
    double t0 = sys_now_ms();
    int rc = kv_step(m->kv, n, m->slots, m->tp, m->ntok, m->logits);
    LOG_D("srv", "kv_step step=%lld entries=%d tokens=%d ms=%.1f", (long long)m->step, n,
          m->budget - budget, sys_now_ms() - t0);
    if (rc) {
        char msg[512];
        snprintf(msg, sizeof msg, "decode failed: %s", err_msg());
        LOG_E("srv", "kv_step n=%d: %s", n, err_msg());
        for (int i = 0; i < n; i++) {
            srv_req *r = q->idx[i];
            int a = 0;
            while (q->act[a] != r)
                a++;
            fail(s, r, msg, &q->ev[a], &q->ev_len[a]);
        }
        return;
    }
    for (int i = 0; i < n; i++) {
        srv_req *r = q->idx[i];
        if (r->fed < r->n_prompt) { // a prompt chunk: only its last one yields a token
            r->fed += m->ntok[i];
            srv_metrics_add(&s->metrics, SRV_M_PROMPT, (uint64_t)m->ntok[i]);
            if (r->fed < r->n_prompt) continue;
        }
        on_logits(s, r, m->logits + (size_t)i * m->V);
        int a = 0;
        while (q->act[a] != r)
            a++;
        emit(s, r, &q->ev[a], &q->ev_len[a]);
    }
}

// deliver hands this iteration's bytes to the connections, retires finished requests and
// resumes the suspended connections that have something new.
static void deliver(srv_server *s, sched *q) {
    for (int i = 0; i < q->na; i++)
        if (q->act[i]->finish) kv_slot_close(q->act[i]->model->kv, q->act[i]->slot);
    int nres = 0, kept = 0;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < q->na; i++) {
        srv_req *r = q->act[i];
        int fin = r->finish != NULL;
        if (q->ev[i] && r->stream) srv_req_append(r, q->ev[i], q->ev_len[i]);
        if (fin && !r->stream) {
            r->body = q->ev[i];
            r->status = strcmp(r->finish, "error") ? 200 : 500;
            q->ev[i] = NULL;
        }
        if (fin) r->done = 1;
        if ((q->ev[i] || fin) && r->suspended && !r->conn_gone) {
            r->suspended = 0;
            q->resume[nres++] = r->conn;
        }
        free(q->ev[i]);
        q->ev[i] = NULL;
        q->ev_len[i] = 0;
        if (fin) {
            double ms = r->t_last - r->t_arrive;
            LOG_I("srv", "id=%s prompt=%d gen=%d finish=%s ms=%.0f tok_s=%.1f", r->id, r->n_prompt,
                  r->n_gen, r->finish, ms,
                  r->n_gen > 1 ? (r->n_gen - 1) / ((r->t_last - r->t_first) / 1e3) : 0.0);
            srv_req_release(s, r);
        } else
            q->act[kept++] = r;
    }
    q->na = kept;
    s->n_active = kept;
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < nres; i++)
        MHD_resume_connection(q->resume[i]);
}

// admit (under mu) drops requests whose client left, fills free slots from the queue and pauses
// the streams whose client has not taken stream_buffer bytes yet. Returns how many active
// requests can be decoded now.
static int admit(srv_server *s, sched *q) {
    int kept = 0;
    for (int i = 0; i < q->na; i++) {
        srv_req *r = q->act[i];
        if (!r->conn_gone) {
            q->act[kept++] = r;
            continue;
        }
        LOG_I("srv", "id=%s cancelled: client gone after %d tokens", r->id, r->n_gen);
        srv_metrics_add(&s->metrics, SRV_M_CANCELLED, 1);
        kv_slot_close(r->model->kv, r->slot);
        srv_req_release(s, r);
    }
    q->na = kept;
    while (q->na < s->max_batch && s->q_head) {
        srv_req *r = s->q_head;
        s->q_head = r->next;
        if (!s->q_head) s->q_tail = NULL;
        s->n_queued--;
        r->next = NULL;
        if (r->conn_gone) {
            srv_metrics_add(&s->metrics, SRV_M_CANCELLED, 1);
            srv_req_release(s, r);
            continue;
        }
        r->slot = kv_slot_open(r->model->kv);
        ASSERT(r->slot >= 0); // each engine has max_batch slots and at most max_batch are active
        q->act[q->na++] = r;
    }
    s->n_active = q->na;
    s->n_paused = 0;
    for (int i = 0; i < q->na; i++) {
        srv_req *r = q->act[i];
        r->paused = r->stream && r->out_len - r->out_off >= s->stream_buffer;
        s->n_paused += r->paused;
    }
    return q->na - s->n_paused;
}

// shutdown_all (under mu) ends every active and queued request and returns the connections to
// resume: streams end where they are, waiting non-streaming requests get 503.
static int shutdown_all(srv_server *s, sched *q) {
    int nres = 0;
    for (int i = 0; i < q->na + s->n_queued; i++) {
        srv_req *r;
        if (i < q->na) {
            r = q->act[i];
            kv_slot_close(r->model->kv, r->slot);
        } else {
            r = s->q_head;
            s->q_head = r->next;
        }
        if (!r->stream && !r->body) {
            r->body = srv_api_error(r->ep, "server shutting down", "server_error");
            r->status = 503;
        }
        r->done = 1;
        if (r->suspended && !r->conn_gone) {
            r->suspended = 0;
            q->resume[nres++] = r->conn;
        }
        srv_req_release(s, r);
    }
    s->q_head = s->q_tail = NULL;
    s->n_queued = 0;
    q->na = 0;
    s->n_active = s->n_paused = 0;
    return nres;
}

void *srv_sched_main(void *arg) {
    srv_server *s = arg;
    ops_init(s->threads); // OpenMP's thread count is per thread: set it for this one
    int B = s->max_batch;
    sched q = {.act = xcalloc((size_t)B, sizeof(srv_req *)),
               .ev = xcalloc((size_t)B, sizeof(char *)),
               .ev_len = xcalloc((size_t)B, sizeof(size_t)),
               .idx = xcalloc((size_t)B, sizeof(srv_req *))};
    // resume holds up to every active and every queued connection at shutdown
    size_t cap = (size_t)B;
    q.resume = xcalloc(cap, sizeof(struct MHD_Connection *));
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->stopping && admit(s, &q) == 0)
            pthread_cond_wait(&s->wake, &s->mu);
        if (s->stopping) {
            if (cap < (size_t)(q.na + s->n_queued)) {
                cap = (size_t)(q.na + s->n_queued);
                q.resume = xrealloc(q.resume, cap * sizeof(struct MHD_Connection *));
            }
            int nres = shutdown_all(s, &q);
            pthread_mutex_unlock(&s->mu);
            for (int i = 0; i < nres; i++)
                MHD_resume_connection(q.resume[i]);
            break;
        }
        pthread_mutex_unlock(&s->mu);
        // one kv_step per distinct model (two only while a reload drains the old one)
        for (int i = 0; i < q.na; i++) {
            int seen = 0;
            for (int j = 0; j < i && !seen; j++)
                seen = q.act[j]->model == q.act[i]->model;
            if (!seen) step_model(s, &q, q.act[i]->model);
        }
        deliver(s, &q);
    }
    free(q.act);
    free(q.ev);
    free(q.ev_len);
    free(q.idx);
    free(q.resume);
    return NULL;
}
