package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// row is one line of the table. A target is reported, never asserted.
type row struct {
	measure, value, target string
	met                    *bool // nil: no target
}

func check(ok bool) *bool { return &ok }

// printTable writes the one table of the run.
func printTable(w io.Writer, r results) {
	o := r.opts
	fmt.Fprintf(w, "\nwalhook end-to-end benchmark: PostgreSQL %s, fsync and full_page_writes %s, %s, seed-000 mix\n", r.pgVersion, onOff(o.fsync), cpus())
	store := ""
	if o.storeDB {
		store = " --store-db"
	}
	if !o.cpuYield {
		store += " --cpu-yield=false"
	}
	fmt.Fprintf(w, "flags: --changes %d --concurrency %d --rate %d --duration %s --rounds %d --clients %d%s\n\n",
		o.changes, o.concurrency, o.rate, o.duration, o.rounds, o.clients, store)
	var rows []row
	if r.backlog > 0 {
		e2e := float64(r.backlog) / r.e2eTime.Seconds()
		bare := float64(r.backlog) / r.bareTime.Seconds()
		rows = append(rows,
			row{"end-to-end deliveries/s (backlog → receiver)", fmt.Sprintf("%.0f", e2e), "≥ 6000", check(e2e >= 6000)},
			row{"  backlog, time, first delivery after", fmt.Sprintf("%d in %s, %s", r.backlog, r.e2eTime.Round(time.Millisecond), r.e2eFirst.Round(time.Millisecond)), "", nil},
			row{"  every delivery in the outbox after (ingest)", ingestText(r), "", nil},
			row{"  duplicates / rejected at the receiver", fmt.Sprintf("%d / %d", r.e2eDups, r.e2eRejected), "", nil},
			row{"bare loop deliveries/s (sign + POST, same bodies)", fmt.Sprintf("%.0f", bare), "", nil},
			row{"  ratio end to end / bare loop", fmt.Sprintf("%.2f", e2e/bare), "≥ 0.50", check(e2e/bare >= 0.5)},
			row{"  CPU per delivery: end to end (walhook's part), bare loop",
				fmt.Sprintf("%s (%s), %s", perDelivery(r.e2eCPU, r.backlog), perDelivery(r.walhookCPU, r.backlog), perDelivery(r.bareCPU, r.backlog)), "", nil},
			row{"  of it: walhook, receiver, PostgreSQL and the rest; bare loop: client and receiver",
				fmt.Sprintf("%s, %s, %s; %s", perDelivery(r.walhookCPU, r.backlog), perDelivery(r.e2eSelfCPU, r.backlog),
					perDelivery(r.e2eCPU-r.walhookCPU-r.e2eSelfCPU, r.backlog), perDelivery(r.bareSelfCPU, r.backlog)), "", nil},
			row{"  walhook's peak resident memory", fmt.Sprintf("%.0f MiB", float64(r.walhookRSS)/(1<<20)), "", nil},
		)
	}
	if r.latSent > 0 {
		achieved := float64(r.latSent) / r.latWindow.Seconds()
		rows = append(rows,
			row{fmt.Sprintf("commit → receiver p50 at %d/s (client clock)", o.rate), ms(r.clientP50), "", nil},
			row{fmt.Sprintf("commit → receiver p99 at %d/s (client clock)", o.rate), ms(r.clientP99), "≤ 25 ms", check(r.clientP99 <= 25*time.Millisecond)},
			row{"  p50 / p99 from the event timestamp", ms(r.stampP50) + " / " + ms(r.stampP99), "", nil},
			row{"  changes delivered, achieved rate", fmt.Sprintf("%d of %d, %.0f/s", r.latMatched, r.latSent, achieved), "", nil},
			row{"  started after the backlog, once settled (outcomes recorded, WAL read)", ms(r.settleTime), "", nil},
		)
	}
	if len(r.tps) > 0 {
		med := map[string]float64{}
		ran := setupsFor(o)
		for _, s := range ran {
			med[s] = median(r.tps[s])
		}
		label := map[string]string{
			setupBare:    "pgbench TPS, no consumer",
			setupRecv:    "pgbench TPS, pg_recvlogical consuming a slot",
			setupWalhook: "pgbench TPS, walhook attached (run + receiver)",
			setupNoYield: "pgbench TPS, walhook attached, cpu.yield off",
			setupTrigger: "pgbench TPS, trigger + queue table + pg_notify",
		}
		for _, s := range ran {
			rows = append(rows, row{label[s], fmt.Sprintf("%.0f  %s", med[s], runs(r.tps[s])), "", nil})
		}
		wr, wt := med[setupWalhook]/med[setupRecv], med[setupWalhook]/med[setupTrigger]
		rows = append(rows,
			row{"  ratio walhook / pg_recvlogical", fmt.Sprintf("%.2f", wr), "≥ 0.90", check(wr >= 0.9)},
			row{"  ratio walhook / trigger", fmt.Sprintf("%.2f", wt), "≥ 1.50", check(wt >= 1.5)},
			row{"  ratio pg_recvlogical / bare, trigger / bare", fmt.Sprintf("%.2f, %.2f", med[setupRecv]/med[setupBare], med[setupTrigger]/med[setupBare]), "", nil},
			row{"  walhook deliveries during its pgbench runs", ints(r.delivered[setupWalhook]), "", nil},
			row{"  walhook: every webhook of a run received, after its end", secs(r.caughtUp[setupWalhook]), "", nil},
		)
		if _, ok := med[setupNoYield]; ok {
			rows = append(rows,
				row{"  cpu.yield off: ratios to pg_recvlogical, trigger", fmt.Sprintf("%.2f, %.2f", med[setupNoYield]/med[setupRecv], med[setupNoYield]/med[setupTrigger]), "", nil},
				row{"  cpu.yield off: deliveries during its pgbench runs", ints(r.delivered[setupNoYield]), "", nil},
				row{"  cpu.yield off: every webhook of a run received, after its end", secs(r.caughtUp[setupNoYield]), "", nil},
			)
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "measure\tvalue\ttarget\t")
	for _, x := range rows {
		verdict := ""
		if x.met != nil {
			verdict = "met"
			if !*x.met {
				verdict = "MISSED"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", x.measure, x.value, x.target, verdict)
	}
	tw.Flush()
	if len(r.tps) > 0 {
		fmt.Fprintf(w, "\npgbench: %d clients, -T %s per run, medians of %d interleaved rounds [each run in brackets]\n",
			o.clients, o.duration, o.rounds)
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

func runs(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf("%.0f", x)
	}
	return "[" + strings.Join(s, " ") + "]"
}

func ints(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ", ")
}

func secs(ds []time.Duration) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = fmt.Sprintf("%.1f s", d.Seconds())
	}
	return strings.Join(s, ", ")
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// ingestText is how long cdc → mapper → Append took to put the whole
// backlog in the outbox, as a time and a rate.
func ingestText(r results) string {
	if r.e2eIngest <= 0 {
		return "not seen"
	}
	return fmt.Sprintf("%s, %.0f/s", r.e2eIngest.Round(time.Millisecond), float64(r.backlog)/r.e2eIngest.Seconds())
}
