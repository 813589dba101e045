package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/config"
)

const (
	aeConfig  = "../../testdata/auction-excellence/walhook.yaml"
	snsConfig = "../../testdata/sns-auctions/walhook.yaml"
)

func writeChanges(t *testing.T, lines ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "changes.jsonl")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func wantLines(t *testing.T, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Fatalf("output lacks %q:\n%s", w, out)
		}
	}
}

func TestMappingTestExplainsEveryRule(t *testing.T) {
	t.Parallel()
	changes := writeChanges(t,
		`# status and assignee change in one update: two events, in rule order`,
		`{"table":"public.problem_reports","op":"update","old":{"id":"p1","auction_id":"a1","title":"Lot 17","status":"open","assignee_id":null,"updated_at":"2024-03-01T13:00:00Z"},"new":{"id":"p1","auction_id":"a1","title":"Lot 17","status":"in_progress","assignee_id":"u7","updated_at":"2024-03-01T13:05:00Z"}}`,
		``,
		`{"table":"problem_reports","op":"update","old":{"id":"p1","auction_id":"a1","title":"Lot 17","status":"open","assignee_id":"u7"},"new":{"id":"p1","auction_id":"a1","title":"Lot 17","status":"open","assignee_id":null}}`,
		`{"table":"public.messages","op":"update","old":{"id":"m1","auction_id":"a1","channel_id":"c1","author_id":"u1","body":"hi","deleted_at":null},"new":{"id":"m1","auction_id":"a1","channel_id":"c1","author_id":"u1","body":"hi","deleted_at":null}}`,
		`{"table":"public.members","op":"update","commit_time":"2024-03-01T10:00:00.5Z","old":{"id":"b2","auction_id":"a1","user_id":null,"email":"kim@example.com","display_name":null,"role":"counter","accepted_at":null,"removed_at":null},"new":{"id":"b2","auction_id":"a1","user_id":"c2","email":"kim@example.com","display_name":"Kim","role":"counter","accepted_at":"2024-03-01T10:00:00.25Z","removed_at":null}}`,
		`{"table":"public.auctions","op":"insert","new":{"id":"a1"}}`,
	)
	out, errOut, code := runCLI(t, context.Background(), "mapping", "test", "--config", aeConfig, "--changes", changes)
	if code != 0 {
		t.Fatalf("exit %d: %s\n%s", code, errOut, out)
	}
	wantLines(t, out,
		"line 2: update public.problem_reports: 2 event(s)\n",
		"  problem.created (../../testdata/auction-excellence/walhook.yaml:84:5: events[4]): not matched: operation update not listed (insert)\n",
		"  problem.status_changed (../../testdata/auction-excellence/walhook.yaml:98:5: events[5]): matched\n"+
			`    {"event":"problem.status_changed","timestamp":"2024-01-01T00:00:00.000Z","webhook_id":"`,
		`","auction_id":"a1","data":{"id":"p1","title":"Lot 17","previous_status":"open","status":"in_progress","updated_at":"2024-03-01T13:05:00.000Z"}}`+"\n"+
			"  problem.assigned (../../testdata/auction-excellence/walhook.yaml:110:5: events[6]): matched\n",
		`"data":{"id":"p1","title":"Lot 17","previous_assignee_id":null,"assignee_id":"u7","updated_at":"2024-03-01T13:05:00.000Z"}}`,
		"line 4: update public.problem_reports: 0 event(s)\n",
		`  problem.status_changed (../../testdata/auction-excellence/walhook.yaml:98:5: events[5]): not matched: changed: no column changed value (status="open" in old and new row)`,
		`  problem.assigned (../../testdata/auction-excellence/walhook.yaml:110:5: events[6]): not matched: when is false: new.assignee_id != nil (new.assignee_id=null)`,
		"line 5: update public.messages: 0 event(s)\n",
		`message.edited (../../testdata/auction-excellence/walhook.yaml:149:5: events[9]): not matched: changed: no column changed value (body="hi" in old and new row)`,
		`message.deleted (../../testdata/auction-excellence/walhook.yaml:162:5: events[10]): not matched: when is false: old.deleted_at == nil && new.deleted_at != nil (old.deleted_at=null, new.deleted_at=null)`,
		"line 6: update public.members: 1 event(s)\n",
		`{"event":"member.joined","timestamp":"2024-03-01T10:00:00.500Z","webhook_id":"`,
		`"data":{"id":"b2","user_id":"c2","email":"kim@example.com","display_name":"Kim","role":"counter","joined_at":"2024-03-01T10:00:00.250Z"}}`,
		`member.removed (../../testdata/auction-excellence/walhook.yaml:232:5: events[16]): not matched: when is false: old.removed_at == nil && new.removed_at != nil (old.removed_at=null, new.removed_at=null)`,
		`member.removed (../../testdata/auction-excellence/walhook.yaml:246:5: events[17]): not matched: operation update not listed (delete)`,
		"line 7: insert public.auctions: 0 event(s)\n  no rule reads public.auctions\n",
		"5 changes\n",
	)
}

func TestMappingTestSNS(t *testing.T) {
	t.Parallel()
	changes := writeChanges(t,
		`{"table":"auctions","op":"update","commit_time":"2024-06-02T12:04:00Z","old":{"id":"auction_123","domain":"example.sol","status":"active","winner":null,"final_price":null,"reserve_price":5,"settled_at":null},"new":{"id":"auction_123","domain":"example.sol","status":"settled","winner":"HN7c","final_price":10,"reserve_price":5,"settled_at":"2024-06-02T12:04:00Z"}}`,
	)
	out, errOut, code := runCLI(t, context.Background(), "mapping", "test", "--config", snsConfig, "--changes", changes)
	if code != 0 {
		t.Fatalf("exit %d: %s\n%s", code, errOut, out)
	}
	wantLines(t, out,
		`{"event":"auction.settled","auctionId":"auction_123","domain":"example.sol","data":{"winner":"HN7c","finalPrice":10,"reservePrice":5,"settledAt":"2024-06-02T12:04:00.000Z"},"timestamp":1717329840,"id":"evt_`,
		`auction.settled_unsold (../../testdata/sns-auctions/walhook.yaml:83:5: events[4]): not matched: when is false: new.status == "settled" && (new.winner == nil || new.final_price == nil || new.final_price < new.reserve_price) (new.status="settled", new.winner="HN7c", new.final_price=10, new.reserve_price=5)`,
		`auction.cancelled (../../testdata/sns-auctions/walhook.yaml:96:5: events[5]): not matched: when is false: old.status == "active" && new.status == "cancelled" (old.status="active", new.status="settled")`,
		`auction.created (../../testdata/sns-auctions/walhook.yaml:31:5: events[0]): not matched: operation update not listed (insert)`,
	)
}

func TestMappingTestUnmappableChange(t *testing.T) {
	t.Parallel()
	changes := writeChanges(t,
		`{"table":"public.messages","op":"update","new":{"id":"m1","auction_id":"a1","body":"x","deleted_at":null}}`,
		`{"table":"channels","op":"update","old":{"id":"c1","archived":"no"},"new":{"id":"c1","archived":"yes"}}`,
		`{"table":"public.messages","op":"insert","unavailable":["body"],"new":{"id":"m2","auction_id":"a1","channel_id":"c","author_id":"u","body":"","attachments":null,"created_at":"2024-01-01T00:00:00Z","deleted_at":null}}`,
	)
	out, errOut, code := runCLI(t, context.Background(), "mapping", "test", "--config", aeConfig, "--changes", changes)
	if code != 1 {
		t.Fatalf("exit %d, want 1: %s\n%s", code, errOut, out)
	}
	wantLines(t, out,
		"  message.edited: error: ../../testdata/auction-excellence/walhook.yaml:149:5: events[9]: event message.edited: update of public.messages arrived without the old row, which this rule reads; run: ALTER TABLE public.messages REPLICA IDENTITY FULL;\n"+
			`    (the line has no "old": give the old row, as REPLICA IDENTITY FULL sends it)`,
		"line 2: update public.channels: 0 event(s)\n  (not in the line, taken as NULL: name, topic, created_by, created_at, archived_at)\n",
		`  channel.archived: error: ../../testdata/auction-excellence/walhook.yaml:188:11: events[12].when: event channel.archived: !old.archived && new.archived on public.channels: interface conversion: interface {} is string, not bool`,
		"(not in the line, taken as NULL: channel_id, author_id, attachments, created_at, edited_at)",
		`message.created (../../testdata/auction-excellence/walhook.yaml:136:5: events[8]): not matched: skipped: column body is an unchanged TOAST value PostgreSQL did not send (REPLICA IDENTITY FULL sends it)`,
	)
	wantLines(t, errOut, "mapping test: 2 of 3 changes cannot be mapped (walhook run would stop on them)")
}

func TestMappingTestBadInput(t *testing.T) {
	t.Parallel()
	changes := writeChanges(t,
		`{"table":"public.messages","op":"insert","new":{"id":"m1"}}`,
		`{"table":"public.messages","op":"upsert","new":{"id":"m1"}}`,
		`not json`,
		`{"table":"public.messages","op":"delete","new":{"id":"m1"}}`,
		`{"op":"insert","new":{"id":"m1"}}`,
		`{"table":"t","op":"insert","new":{"id":1},"colour":"red"}`,
		`{"table":"t","op":"insert","new":{"id":1,"id":2}}`,
		`[{"table":"t","op":"insert","new":{"id":1}}]`,
		`{"table":5,"op":"insert","new":{"id":1}}`,
		`{"table":"t","op":"insert","new":{"id":1},"key":"id"}`,
		`{"table":"t","op":"insert","new":{"id":1},"unavailable":["a",1]}`,
		`{"table":"t","op":"insert","new":{"id":1}} {"table":"t","op":"insert","new":{"id":2}}`,
		`{"table":"t","new":{"id":1}}`,
		`{"table":"t","op":"insert"}`,
		`{"table":"t","op":"insert","old":{"id":1},"new":{"id":1}}`,
		`{"table":"t","op":"update","old":{"id":1}}`,
		`{"table":"t","op":"delete","old":{"id":1},"new":{"id":1}}`,
		`{"table":"t","op":"insert","new":{"id":1},"identity":"nothing"}`,
		`{"table":"t","op":"insert","new":{"id":1},"key":["pk"]}`,
		`{"table":"t","op":"insert","new":{"id":1},"unavailable":["body"]}`,
		`{"table":"t","op":"delete","old":{"id":1},"unavailable":["id"]}`,
		`{"table":"t","op":"insert","new":[1]}`,
		`{"table":"a.b.c","op":"insert","new":{"id":1}}`,
	)
	_, errOut, code := runCLI(t, context.Background(), "mapping", "test", "--config", aeConfig, "--changes", changes)
	if code != 2 {
		t.Fatalf("exit %d, want 2: %s", code, errOut)
	}
	wantLines(t, errOut,
		`changes.jsonl:2: "op" must be insert, update or delete, got "upsert"`,
		`changes.jsonl:3: not a change object: invalid character 'o' in literal null (expecting 'u')`,
		`changes.jsonl:4: a delete needs "old"`,
		`changes.jsonl:5: "table" is required ("schema.table" or "table")`,
		`changes.jsonl:6: not a change object: json: unknown field "colour"`,
		`changes.jsonl:7: "new": column "id" given twice`,
		// Not Go's type names (main.changeLine).
		`changes.jsonl:8: not a change object: want one JSON object per line ({"table": …, "op": …}), got an array`,
		`changes.jsonl:9: not a change object: "table" must be a string, got a number`,
		`changes.jsonl:10: not a change object: "key" must be a list of strings, got a string`,
		// An element of a list of the wrong kind: the list is what is
		// wanted, not a string in its place.
		`changes.jsonl:11: not a change object: "unavailable" must be a list of strings, got a list holding a number`,
		`changes.jsonl:12: more than one JSON value on the line`,
		`changes.jsonl:13: "op" is required: insert, update or delete`,
		`changes.jsonl:14: an insert needs "new"`,
		`changes.jsonl:15: an insert has no "old"`,
		`changes.jsonl:16: an update needs "new" (and "old" for rules that compare)`,
		`changes.jsonl:17: a delete has no "new"`,
		`changes.jsonl:18: "identity" must be full or default, got "nothing"`,
		`changes.jsonl:19: "key": column "pk" is in neither row`,
		`changes.jsonl:20: "unavailable": column "body" is not in "new"`,
		`changes.jsonl:21: "unavailable" names columns of "new", which a delete has none of`,
		`changes.jsonl:22: "new" must be an object of column: value`,
		`changes.jsonl:23: "table": must be "table" or "schema.table", got "a.b.c"`,
	)
	if strings.Contains(errOut, "main.") || strings.Contains(errOut, "Go ") {
		t.Errorf("Go type names in the messages:\n%s", errOut)
	}
	if strings.Contains(errOut, "changes.jsonl:1:") {
		t.Fatalf("good line 1 reported: %s", errOut)
	}
}

func TestMappingTestUsage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"mapping"}, "mapping: no subcommand given (want: test)"},
		{[]string{"mapping", "dry"}, `mapping: unknown subcommand "dry" (want: test)`},
		{[]string{"mapping", "test", "--config", aeConfig}, "mapping test: --changes FILE.jsonl is required"},
		{[]string{"mapping", "test", "--config", aeConfig, "--changes", "/nonexistent/c.jsonl"}, "mapping test: open /nonexistent/c.jsonl: no such file or directory"},
		{[]string{"mapping", "test", "--config", "../../testdata/config/rules.bad.yaml", "--changes", "x"}, "events[0].event: must be lowercase dotted segments"},
		{[]string{"mapping", "test", "--config", aeConfig, "--changes", writeChanges(t, "# nothing")}, "changes.jsonl: no changes"},
		{[]string{"mapping", "test", "--config", aeConfig, "--changes", "../../testdata"}, "mapping test: --changes ../../testdata is a directory; give a file of JSON lines"},
	} {
		_, errOut, code := runCLI(t, ctx, tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Fatalf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
}

// Sample values: a string with a zone is a timestamptz, one without a
// timestamp without time zone, anything else a string.
func TestMappingTestTimestampValues(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]any{
		`"2024-03-01T10:00:00.25+01:00"`: time.Date(2024, 3, 1, 9, 0, 0, 250_000_000, time.UTC),
		`"2024-03-01T12:00:00"`:          time.Date(2024, 3, 1, 12, 0, 0, 0, cdc.NoZone),
		`"2024-03-01T12:00:00.5"`:        time.Date(2024, 3, 1, 12, 0, 0, 500_000_000, cdc.NoZone),
		`"2024-03-01"`:                   "2024-03-01",
		`"12:00"`:                        "12:00",
	} {
		if got := jsonValue(json.RawMessage(in)).V; !reflect.DeepEqual(got, want) {
			t.Errorf("%s = %#v, want %#v", in, got, want)
		}
	}
}

// A --changes file that is not JSON lines at all (a binary, /dev/zero)
// is refused at the line that is too long, in words.
func TestMappingTestLineTooLong(t *testing.T) {
	t.Parallel()
	changes := writeChanges(t, strings.Repeat("x", 16<<20+1))
	_, errOut, code := runCLI(t, context.Background(), "mapping", "test", "--config", aeConfig, "--changes", changes)
	if code != 2 || !strings.Contains(errOut, "changes.jsonl:1: line longer than 16 MiB: one change per line") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
}

// The mapping test reads its config with the same 1 MiB limit as every
// other command (docs/operations.md: a config file over 1 MiB is refused),
// so --config naming the wrong file (a dump, /dev/zero) is refused in
// words instead of being read whole into memory.
func TestMappingTestRefusesAnOversizedConfig(t *testing.T) {
	t.Parallel()
	rules, err := os.ReadFile(aeConfig)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "big.yaml")
	big := append(rules, "\n# "+strings.Repeat("x", config.MaxFileSize)+"\n"...)
	if err := os.WriteFile(path, big, 0o600); err != nil {
		t.Fatal(err)
	}
	changes := writeChanges(t, `{"table":"public.auctions","op":"insert","new":{"id":"a1"}}`)
	_, errOut, code := runCLI(t, context.Background(), "mapping", "test", "--config", path, "--changes", changes)
	if code != 2 || !strings.Contains(errOut, "big.yaml: larger than 1 MiB") {
		t.Fatalf("exit %d, stderr %q; want 2 and the size refused", code, errOut)
	}
}

// The mapping test needs no database, API key or endpoint: a variable the
// config takes them from may be unset, whatever the key's type (README,
// "Try a mapping without a database"). An unset variable in a rule still
// fails: the rules are what the test is about.
func TestMappingTestUnsetVariablesOutsideTheRules(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, events string) string {
		path := filepath.Join(dir, name)
		cfg := `source: {dsn: "${WALHOOK_TEST_UNSET_DATABASE_URL}"}
delivery:
  workers: ${WALHOOK_TEST_UNSET_WORKERS}
  timeout: ${WALHOOK_TEST_UNSET_TIMEOUT}
  allow_http: ${WALHOOK_TEST_UNSET_ALLOW_HTTP}
api:
  listen: ${WALHOOK_TEST_UNSET_LISTEN}
  keys: ["${WALHOOK_TEST_UNSET_API_KEY}"]
endpoints:
  - {id: ops, url: "${WALHOOK_TEST_UNSET_OPS_URL}", secret: "${WALHOOK_TEST_UNSET_OPS_SECRET}", events: ["a.*"]}
events:
` + events
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	changes := writeChanges(t, `{"table":"public.t","op":"insert","new":{"id":1}}`)

	good := write("good.yaml", "  - {event: a.b, table: t, operations: [insert]}\n")
	out, errOut, code := runCLI(t, context.Background(), "mapping", "test", "--config", good, "--changes", changes)
	if code != 0 || !strings.Contains(out, "line 1: insert public.t: 1 event(s)") {
		t.Fatalf("exit %d, want 0 and the event\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}

	bad := write("bad.yaml", "  - {event: a.b, table: \"${WALHOOK_TEST_UNSET_TABLE}\", operations: [insert]}\n")
	_, errOut, code = runCLI(t, context.Background(), "mapping", "test", "--config", bad, "--changes", changes)
	if code != 2 || !strings.Contains(errOut, "bad.yaml:12:25: events[0].table: environment variable WALHOOK_TEST_UNSET_TABLE is not set") {
		t.Fatalf("exit %d, stderr %q; want 2 and the unset variable of the rule", code, errOut)
	}
}
