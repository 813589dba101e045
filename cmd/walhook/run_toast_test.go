package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// A large value an UPDATE leaves unchanged reaches rules only with
// REPLICA IDENTITY FULL. check warns about the table, the skipped event
// is counted in a metric, and setup --replica-identity makes the next
// such update deliver with the value.
func TestRunLargeUnchangedValue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	rc := newRunReceiver(t, runSecret, nil)
	db := newRunDB(t, `CREATE TABLE docs (id int PRIMARY KEY, status text, body text);`)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	file, cfg := runConfig(t, []byte(`
source:
  dsn: set-by-test
events:
  - event: doc.updated
    table: public.docs
    operations: [update]
`), s)
	db.setup(t, cfg)

	out, errOut, code := runCLI(t, ctx, "check", "--config", file)
	if code != 0 {
		t.Fatalf("check: exit %d, want 0 (a warning does not fail)\n%s%s", code, out, errOut)
	}
	ckWantLines(t, out, `warn  large values public.docs: update rules read status, body, which PostgreSQL stores out of line when large .* — fix: ALTER TABLE public.docs REPLICA IDENTITY FULL;`)

	// A body far over the TOAST threshold that does not compress.
	db.exec(t, `INSERT INTO docs SELECT 1, 'draft', string_agg(md5(g::text), '') FROM generate_series(1, 400) g`)
	p := startRunProc(t, "--config", file)
	db.exec(t, `UPDATE docs SET status = 'review' WHERE id = 1`)
	runWaitFor(t, 30*time.Second, "the API address", func() bool { return apiAddrRE.MatchString(p.stdout.String()) }, p.diag)
	base := apiAddrRE.FindStringSubmatch(p.stdout.String())[1]
	runWaitFor(t, 30*time.Second, "the skipped event counted", func() bool {
		return strings.Contains(runMetrics(t, base), "walhook_events_skipped_unavailable_total 1")
	}, p.diag)
	if !strings.Contains(p.stderr.String(), "event skipped: a value it needs is an unchanged TOAST value") {
		t.Error("the skip was not logged")
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}

	out, errOut, code = runCLI(t, ctx, "setup", "--config", file, "--replica-identity")
	if code != 0 {
		t.Fatalf("setup --replica-identity: exit %d\n%s%s", code, out, errOut)
	}
	ckWantLines(t, out, `set REPLICA IDENTITY FULL on public.docs`)
	out, _, _ = runCLI(t, ctx, "check", "--config", file)
	ckNoLines(t, out, `warn  large values`)

	p = startRunProc(t, "--config", file)
	db.exec(t, `UPDATE docs SET status = 'published' WHERE id = 1`)
	runWaitFor(t, 30*time.Second, "the update delivered", func() bool { return rc.Unique() == 1 }, p.diag)
	d := rc.deliveries()[0]
	data, _ := runBody(t, d.Body)["data"].(map[string]any)
	if body, _ := data["body"].(string); data["status"] != "published" || len(body) != 400*32 {
		t.Errorf("delivered data status %v and a body of %d characters; want published and 12800", data["status"], len(body))
	}
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
}

// Under REPLICA IDENTITY FULL an UPDATE that leaves a large (TOASTed)
// value unchanged still sends it as "unchanged" in the new row; walhook
// takes it from the old row: the data holds the whole value, and
// changed: on that column does not fire, while an UPDATE of the value
// itself does.
func TestRunLargeUnchangedValueChanged(t *testing.T) {
	t.Parallel()
	rc := newRunReceiver(t, runSecret, nil)
	db := newRunDB(t, `CREATE TABLE docs (id int PRIMARY KEY, status text, body text); ALTER TABLE docs REPLICA IDENTITY FULL;`)
	s := db.settings()
	s["endpoints"] = []map[string]any{runEndpoint("r", rc.URL, runSecret)}
	file, cfg := runConfig(t, []byte(`
source:
  dsn: set-by-test
events:
  - event: doc.status_changed
    table: public.docs
    operations: [update]
    changed: [status]
    data: [id, status, body]
  - event: doc.body_changed
    table: public.docs
    operations: [update]
    changed: [body]
    data: [id, status, body]
`), s)
	db.setup(t, cfg)
	db.exec(t, `INSERT INTO docs SELECT 1, 'draft', string_agg(md5(g::text), '') FROM generate_series(1, 400) g`)
	p := startRunProc(t, "--config", file)
	db.exec(t, `UPDATE docs SET status = 'review' WHERE id = 1`)
	db.exec(t, `UPDATE docs SET body = 'short' WHERE id = 1`)
	runWaitFor(t, 30*time.Second, "two events", func() bool { return rc.Unique() == 2 }, p.diag)
	time.Sleep(time.Second) // a third would come by now
	var got []string
	for _, d := range rc.deliveries() {
		b := runBody(t, d.Body)
		data, _ := b["data"].(map[string]any)
		body, _ := data["body"].(string)
		got = append(got, fmt.Sprintf("%v %v %d", b["event"], data["status"], len(body)))
	}
	slices.Sort(got)
	if want := []string{"doc.body_changed review 5", "doc.status_changed review 12800"}; !slices.Equal(got, want) {
		t.Fatalf("deliveries %q, want %q", got, want)
	}
}
