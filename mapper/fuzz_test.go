package mapper

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"sort"
	"testing"
	"time"

	"github.com/walhook/walhook/cdc"
)

// fuzzValue draws one column value of any kind cdc produces.
func fuzzValue(data []byte, pos *int) cdc.Value {
	next := func() byte {
		if *pos >= len(data) {
			return 0
		}
		b := data[*pos]
		*pos++
		return b
	}
	k := next()
	x := next()
	switch k % 12 {
	case 0:
		return cdc.Value{State: cdc.Null}
	case 1:
		return cdc.Value{State: cdc.Unavailable}
	case 2:
		return cdc.Value{State: cdc.Absent}
	case 3:
		return cdc.Value{V: string([]byte{'a' + x%3})} // few distinct values: equal often
	case 4:
		return cdc.Value{V: int64(x%4) - 1}
	case 5:
		return cdc.Value{V: json.Number([]string{"1", "1.0", "1.00", "2.5", "-0", "NaN", "1e3"}[x%7])}
	case 6:
		return cdc.Value{V: x%2 == 0}
	case 7:
		return cdc.Value{V: time.Date(2024, 1, 1, 0, 0, int(x%3), 0, time.UTC)}
	case 8:
		return cdc.Value{V: json.RawMessage([]string{`{}`, `{"a":[1,2]}`, `null`, `"s"`}[x%4])}
	case 9:
		return cdc.Value{V: float64(x%3) / 2}
	case 10:
		return cdc.Value{V: []byte{x, 0xff}}
	default:
		return cdc.Value{V: string(data[min(*pos, len(data)):min(*pos+int(x%8), len(data))])} // arbitrary bytes
	}
}

// FuzzMap evaluates the 17 seed-000 rules on random rows of the seed
// tables. Whatever the rows: no panic; an error is a *RuleError of the
// run-time kinds; events are valid JSON, in change and rule order, with
// unique deterministic ids; changed rules only fire on a value change; and
// Explain agrees with Map.
func FuzzMap(f *testing.F) {
	f.Add([]byte{0, 1, 3, 3, 4, 4, 7, 7, 8, 8})
	f.Add([]byte("update members accepted_at"))
	f.Add(bytes.Repeat([]byte{2, 5, 3, 1, 9}, 40))
	rels := seedRels()
	var names []string
	for n := range rels {
		names = append(names, n)
	}
	sort.Strings(names)
	quiet := Options{SystemID: "1", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	m := CompileConfig(f, "../testdata/auction-excellence/walhook.yaml", quiet)
	f.Fuzz(func(t *testing.T, data []byte) {
		pos := 0
		var changes []cdc.Change
		for pos < len(data) && len(changes) < 8 {
			rel := rels[names[int(data[pos])%len(names)]]
			op := cdc.Op(data[pos]/16%3) + cdc.OpInsert
			pos++
			c := cdc.Change{Op: op, Rel: rel}
			if op != cdc.OpDelete {
				for range rel.Columns {
					v := fuzzValue(data, &pos)
					if v.State == cdc.Absent {
						v.State = cdc.Null // new rows always carry every column
					}
					c.New = append(c.New, v)
				}
			}
			if op != cdc.OpInsert && (pos >= len(data) || data[pos]%5 != 0) {
				for range rel.Columns {
					v := fuzzValue(data, &pos)
					if v.State == cdc.Unavailable {
						v.State = cdc.Null // old rows never carry unsent TOAST values
					}
					c.Old = append(c.Old, v)
				}
			}
			changes = append(changes, c)
		}
		tx := txOf(changes...)
		evs, err := m.Map(tx)
		if err != nil {
			var re *RuleError
			if !errors.As(err, &re) || !(errors.Is(err, ErrNeedsOldValues) || errors.Is(err, ErrEvaluation)) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		again, err := m.Map(tx)
		if err != nil || len(again) != len(evs) {
			t.Fatalf("second Map differs: %v", err)
		}
		ids := map[string]bool{}
		var explained []Event
		for i := range tx.Changes {
			explained = append(explained, m.Explain(tx, i).Events...)
		}
		if len(explained) != len(evs) {
			t.Fatalf("Explain found %d events, Map %d", len(explained), len(evs))
		}
		for i, e := range evs {
			if !json.Valid(e.Data) || !json.Valid(e.Body("x")) {
				t.Fatalf("invalid JSON: %s", e.Body("x"))
			}
			if ids[e.ID] || e.ID != again[i].ID || e.ID != explained[i].ID || !bytes.Equal(e.Data, explained[i].Data) {
				t.Fatalf("event %d: id repeated or not deterministic, or Explain differs", i)
			}
			ids[e.ID] = true
			if i > 0 && (e.Position < evs[i-1].Position || e.Position == evs[i-1].Position && e.Rule <= evs[i-1].Rule) {
				t.Fatalf("events out of order: %+v after %+v", e, evs[i-1])
			}
			r := m.rules[e.Rule]
			ch := &tx.Changes[e.Position]
			if ch.Op == cdc.OpUpdate && len(r.Changed) > 0 {
				differs := false
				for _, c := range r.Changed {
					j := ch.Rel.ColumnIndex(c)
					differs = differs || !equalValue(ch.Old[j], ch.New[j])
				}
				if !differs {
					t.Fatalf("%s fired although %v did not change", r.Event, r.Changed)
				}
			}
		}
	})
}
