package mapper_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/pgtest"
	"github.com/walhook/walhook/mapper"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var update = flag.Bool("update", false, "rewrite testdata/*/golden/events.json from the real stream")

// goldenTime replaces the commit time in golden bodies (the only volatile
// value: ids, uuids and the rows' timestamps are fixed by the scripts).
var goldenTime = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// goldenDeliveryID is the webhook_id / id of golden bodies.
func goldenDeliveryID(env mapper.Envelope) string {
	if env == mapper.EnvelopeSNS {
		return "evt_golden"
	}
	return "00000000-0000-0000-0000-000000000000"
}

// goldenEvent is one entry of events.json: which streamed transaction
// (1-based, counting those with changes), change and rule produced it, and
// the body a receiver gets.
type goldenEvent struct {
	Tx       int             `json:"tx"`
	Position int             `json:"position"`
	Rule     int             `json:"rule"`
	Table    string          `json:"table"`
	Body     json.RawMessage `json:"body"`
}

// TestGolden runs each sample system's script against its schema in a
// real PostgreSQL, streams the changes through a real slot, maps every
// transaction and compares the bodies with golden/events.json.
func TestGolden(t *testing.T) {
	t.Parallel()
	for _, system := range []string{"auction-excellence", "sns-auctions"} {
		t.Run(system, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join("..", "testdata", system)
			m := mapper.CompileConfig(t, filepath.Join(dir, "walhook.yaml"), mapper.Options{SystemID: "7345678901234567890",
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			got, txs := streamScript(t, m, dir)

			// Every event type of the catalog appears.
			seen := map[string]bool{}
			for _, e := range got {
				seen[eventType(e.Body)] = true
			}
			for _, et := range m.Events() {
				if !seen[et.Type] {
					t.Errorf("event type %s does not appear in the golden run", et.Type)
				}
			}
			if s := m.Stats(); s.SkippedUnavailable != 0 {
				t.Errorf("stats = %+v: events skipped", s)
			}

			// A replay of the same transactions yields the same ids.
			replay := mapper.CompileConfig(t, filepath.Join(dir, "walhook.yaml"), mapper.Options{SystemID: "7345678901234567890"})
			for _, tx := range txs {
				a, err1 := m.Map(tx)
				b, err2 := replay.Map(tx)
				if err1 != nil || err2 != nil || len(a) != len(b) {
					t.Fatalf("replay: %v %v %d/%d", err1, err2, len(a), len(b))
				}
				for i := range a {
					if a[i].ID != b[i].ID || !bytes.Equal(a[i].Data, b[i].Data) {
						t.Fatalf("replay of xid %d differs: %+v vs %+v", tx.Xid, a[i], b[i])
					}
				}
			}

			// Bodies as sent: no HTML escaping (the mapper does none).
			var buf bytes.Buffer
			enc := json.NewEncoder(&buf)
			enc.SetEscapeHTML(false)
			enc.SetIndent("", "  ")
			if err := enc.Encode(got); err != nil {
				t.Fatal(err)
			}
			out := buf.Bytes()
			path := filepath.Join(dir, "golden", "events.json")
			if *update {
				if err := os.WriteFile(path, out, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./mapper -run TestGolden -update to create it)", err)
			}
			if !bytes.Equal(out, want) {
				t.Fatalf("events differ from %s (rerun with -update after checking):\n%s", path, firstDiff(string(want), string(out)))
			}
		})
	}
}

func eventType(body []byte) string {
	var b struct{ Event string }
	json.Unmarshal(body, &b)
	return b.Event
}

// streamScript loads the system's schema into a fresh database, sets up the
// publication and slot for the mapper's tables, runs golden/script.sql and
// maps every streamed transaction up to a closing logical message.
func streamScript(t *testing.T, m *mapper.Mapper, dir string) ([]goldenEvent, []*cdc.Tx) {
	schema, err := os.ReadFile(filepath.Join(dir, "schema.sql"))
	if err != nil {
		t.Fatal(err)
	}
	var got []goldenEvent
	var txs []*cdc.Tx
	n := 0
	streamTxs(t, string(schema), m.Tables(), scriptStatements(t, filepath.Join(dir, "golden", "script.sql")), func(s *cdc.Stream, tx *cdc.Tx) {
		if len(tx.Changes) == 0 {
			s.Confirm(tx.EndLSN)
			return
		}
		if !tx.Final {
			t.Fatalf("unexpected chunked transaction %d", tx.Xid)
		}
		n++
		txs = append(txs, tx)
		evs, err := m.Map(tx)
		if err != nil {
			t.Fatalf("map transaction %d: %v", n, err)
		}
		for i := range evs {
			e := evs[i]
			if e.ID == "" || e.OccurredAt.IsZero() || !e.OccurredAt.Equal(tx.CommitTime) {
				t.Fatalf("event %+v: no id or wrong time", e)
			}
			e.OccurredAt = goldenTime
			got = append(got, goldenEvent{Tx: n, Position: e.Position, Rule: e.Rule, Table: e.Table,
				Body: e.Body(goldenDeliveryID(e.Envelope))})
		}
		s.Confirm(tx.EndLSN)
	})
	return got, txs
}

// scriptStatements splits a script into statements: a statement ends with
// a line ending in ";"; comment lines are dropped.
func scriptStatements(t *testing.T, path string) []string {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "--") || strings.TrimSpace(line) == "" {
			continue
		}
		cur.WriteString(line)
		cur.WriteString("\n")
		if strings.HasSuffix(strings.TrimSpace(line), ";") {
			out = append(out, cur.String())
			cur.Reset()
		}
	}
	if strings.TrimSpace(cur.String()) != "" {
		t.Fatalf("%s: last statement does not end with ';'", path)
	}
	return out
}

// firstDiff shows the first differing line with some context.
func firstDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			return fmt.Sprintf("line %d:\n  want: %s\n  got:  %s", i+1, wl, gl)
		}
	}
	return "(no line differs)"
}
