package main

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The one walhook on a store loses the store while the source keeps
// committing: nobody streams from the slot, and its WAL grows. The status
// page, documented to stay useful exactly then, says so: slot.state
// waiting_for_store (it said standby, which means another process holds
// the slot), and slot.lagSeconds and walhook_slot_lag_seconds count from
// this process's last confirmation (they said 0, so an alert on them
// never fired during this outage). walhook_slot_reconnects_total counts
// the new term that follows.
func TestRunStatusWhileTheStoreIsDown(t *testing.T) {
	t.Parallel()
	db, _, store, rc, file := twoClusterItems(t, "wh_revops_status")

	p := startRunProc(t, "--config", file)
	runWaitFor(t, 30*time.Second, "the startup line", func() bool { return apiAddrRE.MatchString(p.stdout.String()) }, p.diag)
	base := apiAddrRE.FindStringSubmatch(p.stdout.String())[1]
	insertItems(t, db, 1, 10)
	runWaitFor(t, 30*time.Second, "10 deliveries", func() bool { return rc.Unique() == 10 }, p.diag)

	if err := store.Stop(); err != nil {
		t.Fatalf("stop the store: %v", err)
	}
	insertItems(t, db, 11, 20)
	runWaitFor(t, 60*time.Second, "walhook to stop replicating", func() bool {
		return strings.Contains(p.stderr.String(), "stopped replicating; waiting to take the slot again")
	}, p.diag)
	// The source keeps committing for a while; nothing confirms it.
	for i := 21; i <= 80; i += 10 {
		insertItems(t, db, i, i+9)
		time.Sleep(time.Second)
	}
	if err, exited := p.exited(); exited {
		t.Fatalf("walhook run exited: %v", err)
	}

	st := apiGet(t, base, "/api/v1/status")
	data, _ := st["data"].(map[string]any)
	slot, _ := data["slot"].(map[string]any)
	t.Logf("status while the store is down: %v", data)
	lagBytes, _ := slot["lagBytes"].(float64)
	lagSeconds, _ := slot["lagSeconds"].(float64)
	if lagBytes <= 0 {
		t.Fatalf("slot.lagBytes %v, want > 0 (the source committed for 6 s with nobody streaming)", slot["lagBytes"])
	}
	m := regexp.MustCompile(`(?m)^walhook_slot_lag_seconds (\S+)$`).FindStringSubmatch(runMetrics(t, base))
	metricLag := -1.0
	if m != nil {
		metricLag, _ = strconv.ParseFloat(m[1], 64)
	}
	var bad []string
	if state := slot["state"]; state != stateWaitingForStore {
		bad = append(bad, fmt.Sprintf("slot.state %v, want %s: no process holds the slot (slot.active=%v), this one lost its store",
			state, stateWaitingForStore, slot["active"]))
	}
	if lagSeconds < 5 {
		bad = append(bad, "slot.lagSeconds "+strconv.FormatFloat(lagSeconds, 'f', -1, 64)+
			" while lagBytes "+strconv.FormatFloat(lagBytes, 'f', 0, 64)+" have been unconfirmed for more than 6 s")
	}
	if metricLag < 5 {
		bad = append(bad, "walhook_slot_lag_seconds "+m[1]+", the same")
	}
	if len(bad) > 0 {
		t.Errorf("status while the store is down:\n  %s", strings.Join(bad, "\n  "))
	}

	if err := store.StartAgain(); err != nil {
		t.Fatalf("start the store again: %v", err)
	}
	runWaitFor(t, 90*time.Second, "80 deliveries after the store came back", func() bool { return rc.Unique() == 80 }, p.diag)
	// The new term is a reconnect of this process: the counter goes on
	// from the last term's count (it fell back to the new stream's 0).
	if m := regexp.MustCompile(`(?m)^walhook_slot_reconnects_total (\S+)$`).FindStringSubmatch(runMetrics(t, base)); m == nil || m[1] == "0" {
		t.Errorf("walhook_slot_reconnects_total after a new term: %v, want at least 1", m)
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
}
