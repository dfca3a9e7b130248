/* tokenpace fault dropper: a tc (clsact egress, direct-action) program that loses packets the way
 * netem does — Bernoulli, Gilbert-Elliott (netem's gemodel, same transition order) or everything
 * (an outage) — when the kernel has no sch_netem.
 *
 * A lost packet returns TC_ACT_STOLEN, not TC_ACT_SHOT: the stack then reports the send as a
 * success and TCP learns of the loss the way it would on a real path (dup ACKs / SACK / RTO).
 * TC_ACT_SHOT or an nftables drop is a *local* drop (NET_XMIT_DROP): TCP treats it as "not sent"
 * and just tries again, so almost no retransmits happen.
 *
 * Probabilities arrive from userspace as thresholds on bpf_get_prandom_u32(): lost when
 * rand < thr, with thr = p * 2^32 (a u64 so that p = 1 is exact).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#define MODE_OFF 0
#define MODE_BERNOULLI 1
#define MODE_GE 2
#define MODE_DROP_ALL 3

struct loss_cfg {
    u32 mode;
    u32 pad;
    u64 thr_loss;      /* Bernoulli: P(loss) */
    u64 thr_to_bad;    /* GE: p = P(good -> bad) */
    u64 thr_to_good;   /* GE: r = P(bad -> good) */
    u64 thr_loss_good; /* GE: 1 - k */
    u64 thr_loss_bad;  /* GE: 1 - h */
};

struct loss_state {
    u64 passed;
    u64 dropped;
    u32 bad; /* GE state: 1 = bad */
    u32 pad;
};

BPF_ARRAY(loss_cfg, struct loss_cfg, 1);
BPF_ARRAY(loss_state, struct loss_state, 1);

static __always_inline int chance(u64 thr) {
    return (u64)bpf_get_prandom_u32() < thr;
}

int tokenpace_loss(struct __sk_buff *skb) {
    u32 zero = 0;
    struct loss_cfg *cfg = loss_cfg.lookup(&zero);
    struct loss_state *st = loss_state.lookup(&zero);
    if (!cfg || !st)
        return TC_ACT_OK;
    int lose = 0;
    switch (cfg->mode) {
    case MODE_BERNOULLI:
        lose = chance(cfg->thr_loss);
        break;
    case MODE_GE:
        /* netem's loss_gilb_ell(): move first, then lose with the *old* state's probability */
        if (st->bad == 0) {
            if (chance(cfg->thr_to_bad))
                st->bad = 1;
            lose = chance(cfg->thr_loss_good);
        } else {
            if (chance(cfg->thr_to_good))
                st->bad = 0;
            lose = chance(cfg->thr_loss_bad);
        }
        break;
    case MODE_DROP_ALL:
        lose = 1;
        break;
    default:
        break;
    }
    if (lose) {
        __sync_fetch_and_add(&st->dropped, 1);
        return TC_ACT_STOLEN;
    }
    __sync_fetch_and_add(&st->passed, 1);
    return TC_ACT_OK;
}
