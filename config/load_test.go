package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

// badConfigs lists, per file in testdata/config, every error the file must
// produce (substrings, each including its line:col).
var badConfigs = map[string][]string{
	"unknown-key.bad.yaml": {
		`:3:3: source.slots: unknown key (did you mean "slot"?)`,
		`:6:5: events[0].tabel: unknown key (did you mean "table"?)`,
	},
	"three-errors.bad.yaml": {
		`:2:8: source.dsn: environment variable WALHOOK_TEST_UNSET_DSN is not set`,
		`:3:3: source.colour: unknown key`,
		`:5:12: delivery.timeout: invalid duration "30"`,
	},
	"rules.bad.yaml": {
		`:4:12: events[0].event: must be lowercase dotted segments`,
		`:5:12: events[0].table: must be "table" or "schema.table", got "a.b.c"`,
		`:6:26: events[0].operations[1]: must be insert, update or delete, got "upsert"`,
		`:6:34: events[0].operations[2]: "insert" listed twice`,
		`:7:5: events[1].event: required`,
		`:7:5: events[1].table: required`,
		`:7:5: events[1].operations: required`,
		`:11:14: events[2].changed: only applies to updates`,
		`:12:11: events[2].when: is empty`,
		`:13:17: events[2].auction_id: column reference "older.auction_id"`,
		`:14:15: events[2].envelope: must be "auction-excellence" or "sns", got "json"`,
		`:20:9: events[3].data[1]: new.… has no value for deletes`,
		`:21:9: events[3].data[2]: data key "id" repeats events[3].data[0]`,
		`:22:16: events[3].data[3].weird: a mapping value must be {const: value}`,
		`:23:9: events[3].data[4]: must be a column name or a one-key mapping`,
		`:28:9: events[4].data[0]: old.… has no value for inserts`,
	},
	"envelope-conflict.bad.yaml": {
		`:12:15: events[1].envelope: event "auction.created" uses envelope "auction-excellence" here but "sns" at`,
	},
	"endpoints.bad.yaml": {
		`:12:9: endpoints[1].id: "ops" is already the id of endpoints[0]`,
		`:13:10: endpoints[1].url: must be an http:// or https:// URL, got scheme "ftp"`,
		`:14:13: endpoints[1].secret: invalid webhook secret: must start with "whsec_"`,
		`:15:14: endpoints[1].events[0]: "member.*" matches no event type`,
		`:15:24: endpoints[1].events[1]: unknown event type "problem.gone"`,
		`:16:9: endpoints[2].id: must be 1 to 64 characters`,
		`:17:10: endpoints[2].url: has no host`,
		`:18:13: endpoints[2].secret: invalid webhook secret: key is 5 bytes, want 24 to 64`,
		`:19:5: endpoints[3].secret: required for static endpoints`,
		`:20:10: endpoints[3].url: not a URL`,
	},
	"delivery.bad.yaml": {
		`:8:19: delivery.retry_schedule: must list at least one delay`,
		`:9:11: delivery.jitter: must be between 0 and 1, got 1.5`,
		`:10:12: delivery.workers: must be at least 1, got 0`,
		`:11:12: delivery.timeout: invalid duration "1 minute"`,
		`:12:10: delivery.lease: must be positive, got -1s`,
		`:13:11: delivery.allow[0]: must be a CIDR`,
		`:13:24: delivery.allow[1]: must be a CIDR like "10.0.0.0/8" or a host name like "hooks.internal", got "not a host"`,
		`:15:28: delivery.disable.min_failed_deliveries: must be at least 1, got 0`,
		`:16:13: delivery.disable.window: invalid duration "forever"`,
		// The dispatcher would read these zeros as its defaults.
		`:17:22: delivery.max_response_body: must be at least 1, got 0`,
		`:18:20: delivery.retry_after_cap: must be positive, got 0s`,
		`:19:19: delivery.secret_overlap: must be positive, got 0s`,
	},
	"api.bad.yaml": {
		`:8:11: api.listen: must be host:port`,
		`:10:7: api.keys[0]: key is 5 characters; use at least 16`,
		`:11:7: api.keys[1]: key is empty`,
		`:14:7: api.keys[3]: same key as api.keys[2]`,
		`:14:7: api.keys[3]: name "a" is already used by api.keys[2]`,
		`:17:23: api.rate_limits.write_per_minute: must be at least 1, got 0`,
		`:18:22: api.rate_limits.read_per_minute: must be an integer, got "lots"`,
		`:20:10: cpu.yield: must be true or false, got "sometimes"`,
		`:21:12: cpu.max_lag: must be positive, got 0s (to never yield the CPU, set cpu.yield: false)`,
		`:23:10: log.level: must be debug, info, warn or error, got "loud"`,
	},
	"cpu.bad.yaml": {
		`:9:12: cpu.max_lag: must be at least twice source.heartbeat_interval (1m0s), got 1m30s: an idle source would look that far behind between heartbeats`,
	},
	"types.bad.yaml": {
		`:1:9: source: must be a mapping, got "postgres://localhost/…"`,
		`:3:3: events: must be a list, got a mapping`,
		`:5:12: delivery.workers: must be an integer, got a list`,
		`:6:15: delivery.allow_http: must be true or false, got "maybe"`,
		`:7:11: delivery.jitter: must be a number, got "high"`,
		`:8:24: delivery.retry_schedule[1]: must not be negative, got -1m0s`,
		`:8:29: delivery.retry_schedule[2]: invalid duration "5"`,
	},
	"missing.bad.yaml": {
		`:2:11: store.schema: must be a schema name`,
		`:4:3: source.dsn: required`,
		`:4:9: source.slot: must be 1 to 63 characters of a-z, 0-9 and _`,
		`:5:23: source.heartbeat_interval: must not be negative`,
		`:6:9: events: required: at least one event rule`,
	},
	// Numbers too large for their key are out of range, not "not an integer".
	"range.bad.yaml": {
		`:3:22: source.max_chunk_changes: out of range: at most 2147483647, got 99999999999999999999`,
		`:5:12: delivery.workers: out of range: at most 2147483647, got 3000000000`,
		`:6:10: delivery.lease: duration out of range: at most 2562047h (about 292 years), got "99999999999h"`,
		`:13:10: endpoints[0].url: port 99999 out of range: use 1 to 65535`,
		`:16:10: endpoints[1].url: port 0 out of range: use 1 to 65535`,
		`:19:10: endpoints[2].url: has no scheme: write it as https://host/path`,
	},
	// Keys no X-API-Key header can carry: HTTP trims the blanks around a
	// header value, so no request would ever match.
	"apikey.bad.yaml": {
		`:9:7: api.keys[0]: key has a blank or a line break at its start or end, which no X-API-Key header can carry`,
		`:10:7: api.keys[1]: key has a blank or a line break at its start or end, which no X-API-Key header can carry`,
		`:11:7: api.keys[2]: key contains a control character (a tab, a line break), which no X-API-Key header can carry`,
	},
	// A line break at an end of a DSN (an environment variable read from a
	// file with its newline) became part of the last value: "sslmode is
	// invalid", or database "app\n" does not exist.
	"dsn.bad.yaml": {
		`:2:8: source.dsn: has a line break at its start or end (a value read from a file with its newline?); remove it`,
		`:4:8: store.dsn: has a line break at its start or end (a value read from a file with its newline?); remove it`,
	},
	// A rule that repeats another (a copy not yet changed) makes every
	// change produce its event twice, under two ids. One with a when of
	// its own (events[2]) is a rule of its own.
	"repeat.bad.yaml": {
		`:8:5: events[1]: repeats events[0] (line 4: same event, table, operations, conditions and data): every change would produce the event twice`,
	},
	// domain belongs to the sns envelope: on an auction-excellence rule,
	// or as mapping.domain with no sns rule, it would do nothing.
	"domain.bad.yaml": {
		`:4:11: mapping.domain: applies to the "sns" envelope only, and no rule uses it (remove domain, or set envelope: sns)`,
		`:9:13: events[0].domain: applies to the "sns" envelope only; this rule's envelope is "auction-excellence" (remove domain, or set envelope: sns)`,
	},
	// A tab in the indentation: YAML indents with spaces only.
	"tab.bad.yaml": {`tab.bad.yaml:4: invalid YAML: found character that cannot start any token (a tab: YAML indents with spaces only)`},
	// A file that is not a mapping: that alone, not also every required key.
	"root.bad.yaml":      {`:1:1: the file must be a mapping of keys (source:, events:, ...), got a list`},
	"syntax.bad.yaml":    {`syntax.bad.yaml:3: invalid YAML: did not find expected key`},
	"empty.bad.yaml":     {`empty.bad.yaml:1:1: the file is empty`},
	"dashes.bad.yaml":    {`dashes.bad.yaml:1:1: the file is empty`},
	"multidoc.bad.yaml":  {`:3:1: a second YAML document`},
	"duplicate.bad.yaml": {`:3:3: source.dsn: key written twice (first at line 2)`},
	// Column references and data entries in every wrong shape.
	"data.bad.yaml": {
		`:7:23: events[0].changed[1]: must be a column name (not empty, and with no dot, tab or line break), got "a.b"`,
		`:9:13: events[0].domain: column reference "older.domain": write column, new.column or old.column`,
		`:11:9: events[0].data[0]: column reference "older.id": write column, new.column or old.column`,
		`:12:9: events[0].data[1]: column reference "bad\tcol": the column name is empty or holds a dot, a tab or a line break; write column, new.column or old.column`,
		`:13:9: events[0].data[2]: must be a column name or a one-key mapping like ` + "`key: column`" + `, got a mapping with 2 keys`,
		`:14:9: events[0].data[3]: the data key must be a non-empty string`,
		`:15:17: events[0].data[4].nothing: needs a column (column, new.column or old.column) or {const: value}`,
		`:16:16: events[0].data[5].owner: column reference "older.owner": write column, new.column or old.column`,
		`:17:15: events[0].data[6].list: must be a column (column, new.column or old.column) or {const: value}, got a list`,
		":18:24: events[0].data[7].typed.const: cannot decode !!str `abc` as a !!int",
	},
	// One wrong value for each key no other file gets wrong.
	"values.bad.yaml": {
		`:3:20: source.status_interval: must be positive, got 0s`,
		`:4:22: source.max_chunk_changes: out of range: at least -2147483648, got -99999999999`,
		`:6:13: mapping.envelope: must be "auction-excellence" or "sns", got "json"`,
		`:8:5: events[0].envelope: must be "auction-excellence" or "sns", got "json"`,
		`:12:5: endpoints[0].id: required: a stable name for this endpoint`,
		`:14:22: endpoints[0].auctions[1]: must not be empty`,
		`:16:10: endpoints[1].url: must not carry user:password (receivers verify the signature instead)`,
		`:18:5: endpoints[2].url: required: the https:// URL webhooks are POSTed to`,
		`:22:10: delivery.lease: must be longer than delivery.timeout (1m0s), or a delivery still in flight is claimed again; got 30s`,
		`:24:11: api.listen: port must be a number 0..65535, got "http"`,
		`:25:10: api.open[0]: must be a path starting with /, got "healthz"`,
		`:27:11: log.format: must be text or json, got "xml"`,
	},
	// No request can carry a line break in a header: every delivery
	// would fail in the HTTP client, and the endpoints be disabled.
	"useragent.bad.yaml": {`:8:15: delivery.user_agent: contains a control character (a line break or the like), which no User-Agent header can carry`},
	// A list or a mapping where a true/false, a number or a duration goes.
	"kinds.bad.yaml": {
		`:8:15: delivery.allow_http: must be true or false, got a list`,
		`:9:11: delivery.jitter: must be a number, got a mapping`,
		`:10:18: delivery.poll_interval: must be a duration like "30s", got a list`,
	},
	// 32 characters, 64 bytes: PostgreSQL's limit counts bytes.
	"names.bad.yaml": {
		`:3:16: source.publication: must be a name of 1 to 63 bytes (PostgreSQL's limit; a non-ASCII character takes 2 to 4), got "éééééééééééééééééééééééééééééééé" (64 bytes)`,
		`:5:11: store.schema: must be a schema name of 1 to 63 bytes (PostgreSQL's limit; a non-ASCII character takes 2 to 4), got "éééééééééééééééééééééééééééééééé" (64 bytes)`,
	},
	"listen.bad.yaml": {`:8:11: api.listen: host must be an IP address or a host name, got "bad host!"`},
	"keys.bad.yaml":   {`:3:5: source: keys must be plain strings, got a list`},
	// "null" is a value, not an empty file.
	"null.bad.yaml": {`null.bad.yaml:1:1: the file holds only "null", which YAML reads as null: it must be a mapping of keys (source:, events:, ...)`},
	// A syntax error in a second document is reported as one.
	"multidoc-syntax.bad.yaml": {`multidoc-syntax.bad.yaml:4: invalid YAML: did not find expected node content`},
	"expand.bad.yaml": {
		`:2:8: source.dsn: environment variable WALHOOK_TEST_UNSET_DB is not set`,
		`:3:9: source.slot: invalid variable name "1BAD"`,
		`:4:16: source.publication: unterminated ${`,
	},
}

func TestBadConfigs(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("../testdata/config/*.bad.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no bad configs: %v", err)
	}
	for _, f := range files {
		want, ok := badConfigs[filepath.Base(f)]
		if !ok {
			t.Errorf("%s: no expected errors listed in badConfigs", f)
			continue
		}
		t.Run(filepath.Base(f), func(t *testing.T) {
			t.Parallel()
			cfg, err := Load(f, env(nil))
			if err == nil {
				t.Fatalf("loaded without error: %+v", cfg)
			}
			if cfg != nil {
				t.Errorf("config returned with an error")
			}
			var errs *Errors
			if !errors.As(err, &errs) {
				t.Fatalf("error is %T, want *Errors: %v", err, err)
			}
			got := err.Error()
			for _, w := range want {
				if !strings.Contains(got, f+w) && !strings.Contains(got, w) {
					t.Errorf("missing %q in\n%s", w, got)
				}
			}
			if n := len(strings.Split(got, "\n")); n != len(want) {
				t.Errorf("got %d errors, want %d:\n%s", n, len(want), got)
			}
			for _, e := range errs.Errs {
				if e.Pos.File != f || e.Pos.Line < 1 {
					t.Errorf("error without file and line: %+v", e)
				}
			}
		})
	}
}

func TestGoodConfigs(t *testing.T) {
	t.Parallel()
	files, _ := filepath.Glob("../testdata/config/*.good.yaml")
	samples, _ := filepath.Glob("../testdata/*/walhook.yaml")
	if len(files) == 0 {
		t.Fatal("no good configs")
	}
	lookup := env(map[string]string{
		"DATABASE_URL":    "postgres://walhook@localhost/app",
		"WALHOOK_API_KEY": "test-key-0123456789abcdef",
	})
	for _, f := range append(files, samples...) {
		t.Run(f, func(t *testing.T) {
			t.Parallel()
			cfg, err := Load(f, lookup)
			if err != nil {
				t.Fatalf("load:\n%v", err)
			}
			if len(cfg.Events) == 0 || len(cfg.Catalog()) == 0 {
				t.Fatal("no events")
			}
			for i, r := range cfg.Events {
				if r.Pos.Line == 0 || r.Pos.File != f {
					t.Errorf("events[%d] has no position: %+v", i, r.Pos)
				}
			}
			if err := cfg.Validate(); err != nil {
				t.Errorf("Validate after Load: %v", err)
			}
		})
	}
}

func TestSampleCatalogs(t *testing.T) {
	t.Parallel()
	lookup := env(map[string]string{"DATABASE_URL": "postgres://x@y/z", "WALHOOK_API_KEY": "test-key-0123456789abcdef"})
	for file, want := range map[string]int{
		"../testdata/auction-excellence/walhook.yaml": 17,
		"../testdata/sns-auctions/walhook.yaml":       6,
	} {
		if _, err := os.Stat(file); err != nil {
			t.Logf("%s not there yet", file)
			continue
		}
		cfg, err := Load(file, lookup)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if got := len(cfg.Catalog()); got != want {
			t.Errorf("%s: %d event types, want %d", file, got, want)
		}
	}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := Load("../testdata/config/minimal.good.yaml", env(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		File: "../testdata/config/minimal.good.yaml",
		Source: Source{DSN: "postgres://walhook@localhost/app", Publication: "walhook", Slot: "walhook", HeartbeatInterval: Duration(5 * time.Second), StatusInterval: Duration(10 * time.Second), MaxChunkChanges: 10000,
			DSNPos: Pos{File: "../testdata/config/minimal.good.yaml", Line: 2, Column: 8}},
		Store:   Store{DSN: "postgres://walhook@localhost/app", Schema: "walhook"},
		Mapping: Mapping{Envelope: "auction-excellence"},
		Events: []Rule{{Event: "problem.created", Table: "problem_reports", Operations: []string{"insert"}, Envelope: "auction-excellence",
			Pos: Pos{File: "../testdata/config/minimal.good.yaml", Line: 4, Column: 5}}},
		Delivery: Delivery{
			RetrySchedule: []Duration{0, Duration(time.Minute), Duration(5 * time.Minute), Duration(30 * time.Minute), Duration(2 * time.Hour), Duration(12 * time.Hour)},
			Jitter:        0.1, RetryAfterCap: Duration(time.Hour), Timeout: Duration(30 * time.Second), Workers: 32,
			MaxInFlightPerEndpoint: 8, BatchSize: 64, Lease: Duration(time.Minute), PollInterval: Duration(time.Second),
			MaxResponseBody: 1024, Retention: Duration(168 * time.Hour),
			Disable:       DisableRule{Window: Duration(24 * time.Hour), MinFailedDeliveries: 3},
			SecretOverlap: Duration(24 * time.Hour), EndpointMetrics: true,
		},
		API: API{Listen: "127.0.0.1:8080", Open: []string{"/healthz", "/readyz", "/metrics"},
			RateLimits: RateLimits{WritePerMinute: 60, ReadPerMinute: 100}},
		CPU: CPU{Yield: true, MaxLag: Duration(time.Minute)},
		Log: Log{Level: "info", Format: "text"},
	}
	if !reflect.DeepEqual(*cfg, want) {
		t.Errorf("got  %+v\nwant %+v", *cfg, want)
	}
}

func TestFullConfigValues(t *testing.T) {
	t.Parallel()
	cfg, err := Load("../testdata/config/full.good.yaml", env(map[string]string{"CI_KEY": ""}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Source.HeartbeatInterval != 0 {
		t.Errorf("explicit heartbeat_interval 0 became %s", cfg.Source.HeartbeatInterval.D())
	}
	if cfg.Delivery.Jitter != 0 || cfg.Delivery.Disable.Never {
		t.Errorf("explicit zeros overwritten: jitter %v, disable.never %v", cfg.Delivery.Jitter, cfg.Delivery.Disable.Never)
	}
	if cfg.Delivery.MaxResponseBody != 256 || cfg.Delivery.RetryAfterCap.D() != 30*time.Minute || cfg.Delivery.SecretOverlap.D() != time.Hour {
		t.Errorf("delivery values: %+v", cfg.Delivery)
	}
	if cfg.Source.DSN != "postgres://walhook@localhost/app" {
		t.Errorf("dsn default not expanded: %q", cfg.Source.DSN)
	}
	if cfg.Store.DSN != "postgres://walhook@localhost/walhook_store" {
		t.Errorf("store dsn %q", cfg.Store.DSN)
	}
	r := cfg.Events[0]
	wantData := []DataField{
		{Key: "id", Column: "id", Pos: Pos{cfg.File, 25, 9}},
		{Key: "auctionId", Column: "id", Pos: Pos{cfg.File, 26, 9}},
		{Key: "reserve", Column: "reserve_price", From: "new", Pos: Pos{cfg.File, 27, 9}},
		{Key: "source", IsConst: true, Const: "walhook", Pos: Pos{cfg.File, 28, 9}},
		{Key: "tags", IsConst: true, Const: []any{"a", "b"}, Pos: Pos{cfg.File, 29, 9}},
		{Key: "nothing", IsConst: true, Pos: Pos{cfg.File, 30, 9}},
	}
	if !reflect.DeepEqual(r.Data, wantData) {
		t.Errorf("data:\n got  %+v\n want %+v", r.Data, wantData)
	}
	ended := cfg.Events[1]
	if !reflect.DeepEqual(ended.Operations, []string{"update"}) {
		t.Errorf("merge key: operations %v", ended.Operations)
	}
	if ended.Data[2].Key != "previous" || ended.Data[2].From != "old" || ended.Data[2].Column != "status" {
		t.Errorf("flow mapping data field: %+v", ended.Data[2])
	}
	if del := cfg.Events[2].Data[1]; del.Key != "domain" || del.From != "old" {
		t.Errorf("bare old.domain: %+v", del)
	}
	if cfg.Events[0].Envelope != "sns" {
		t.Errorf("rule envelope not defaulted from mapping: %q", cfg.Events[0].Envelope)
	}
	keys := cfg.API.Keys
	if len(keys) != 2 || keys[0].Name != "key1" || keys[0].Key != "0123456789abcdef0123" ||
		keys[1].Name != "ci" || keys[1].Key != "fedcba9876543210fedcba" {
		t.Errorf("api keys: %+v", keys)
	}
	if cfg.Delivery.Lease.D() != time.Minute || cfg.API.Listen != ":9090" {
		t.Errorf("lease %s listen %q", cfg.Delivery.Lease.D(), cfg.API.Listen)
	}
	// The position of an endpoint is where its mapping starts: the line of
	// "- id: ops-1", as for rules (TestDefaults).
	if len(cfg.Endpoints) != 1 || cfg.Endpoints[0].Pos != (Pos{cfg.File, 43, 5}) {
		t.Errorf("endpoint position: %+v", cfg.Endpoints)
	}
}

func TestLeaseFollowsTimeout(t *testing.T) {
	t.Parallel()
	cfg, err := Parse("x.yaml", []byte("source: {dsn: d}\nevents: [{event: a.b, table: t, operations: [insert]}]\ndelivery: {timeout: 2m}\napi: {listen: \"off\"}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Delivery.Lease.D() != 2*time.Minute+LeaseMargin {
		t.Errorf("lease %s", cfg.Delivery.Lease.D())
	}
	if cfg.API.Listen != "" {
		t.Errorf("listen off: %q", cfg.API.Listen)
	}
}

// TestThreeErrorsAtOnce is issue 2's acceptance case: an unknown key, a bad
// duration and an unset variable, all reported with line numbers.
func TestThreeErrorsAtOnce(t *testing.T) {
	t.Parallel()
	_, err := Load("../testdata/config/three-errors.bad.yaml", env(nil))
	var errs *Errors
	if !errors.As(err, &errs) || len(errs.Errs) != 3 {
		t.Fatalf("want 3 errors, got %v", err)
	}
	want := []struct {
		line int
		path string
	}{{2, "source.dsn"}, {3, "source.colour"}, {5, "delivery.timeout"}}
	for i, w := range want {
		if e := errs.Errs[i]; e.Pos.Line != w.line || e.Path != w.path {
			t.Errorf("error %d: %s:%d %s, want line %d %s", i, e.Pos.File, e.Pos.Line, e.Path, w.line, w.path)
		}
	}
	var one *Error
	if !errors.As(err, &one) || one.Path != "source.dsn" {
		t.Errorf("errors.As(*Error) = %v", one)
	}
}

func TestExpand(t *testing.T) {
	t.Parallel()
	lookup := env(map[string]string{"HOST": "db", "EMPTY": "", "PORT": "5433"})
	for _, tc := range []struct{ in, want, err string }{
		{in: "plain", want: "plain"},
		{in: "${HOST}", want: "db"},
		{in: "postgres://${HOST}:${PORT}/x", want: "postgres://db:5433/x"},
		{in: "${MISSING:-fallback}", want: "fallback"},
		{in: "${EMPTY:-fallback}", want: "fallback"},
		{in: "${EMPTY}", want: ""},
		{in: "${MISSING:-}", want: ""},
		{in: "${MISSING:-a:-b}", want: "a:-b"},
		{in: "cost $$5", want: "cost $5"},
		{in: "$${HOST}", want: "${HOST}"},
		{in: "pa$word$", want: "pa$word$"},
		{in: "${MISSING}", err: "environment variable MISSING is not set"},
		{in: "${HOST", err: "unterminated ${"},
		{in: "${}", err: "invalid variable name"},
		{in: "${A-B}", err: "invalid variable name"},
	} {
		got, err := expand(tc.in, lookup)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("expand(%q) error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("expand(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestExpandInTree(t *testing.T) {
	t.Parallel()
	src := `# ${NOT_EXPANDED_IN_COMMENTS}
source:
  dsn: postgres://${HOST}/app
events:
  - event: a.b
    table: t
    operations: ["${OP:-insert}", "${OP2}"]
    data:
      - "${KEY_NOT_EXPANDED}": id
      - price: {const: "$$5"}
      - n:
          const: ${NUM:-7}
delivery:
  workers: ${WORKERS:-4}
api:
  keys: ["${API_KEY}"]
`
	lookup := env(map[string]string{"HOST": "db", "OP2": "update", "API_KEY": "k-0123456789abcdef"})
	cfg, err := Parse("t.yaml", []byte(src), lookup)
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Events[0]
	if cfg.Source.DSN != "postgres://db/app" || !reflect.DeepEqual(r.Operations, []string{"insert", "update"}) {
		t.Errorf("dsn %q ops %v", cfg.Source.DSN, r.Operations)
	}
	if r.Data[0].Key != "${KEY_NOT_EXPANDED}" {
		t.Errorf("key expanded: %q", r.Data[0].Key)
	}
	if r.Data[1].Const != "$5" {
		t.Errorf("$$: %#v", r.Data[1].Const)
	}
	if r.Data[2].Const != 7 {
		t.Errorf("plain expanded scalar not re-resolved as int: %#v", r.Data[2].Const)
	}
	if cfg.Delivery.Workers != 4 || cfg.API.Keys[0].Key != "k-0123456789abcdef" {
		t.Errorf("workers %d keys %+v", cfg.Delivery.Workers, cfg.API.Keys)
	}

	// Unset variables: every one reported, with its position, and no
	// follow-up "required" error for the value it emptied.
	_, err = Parse("t.yaml", []byte(src), env(nil))
	got := err.Error()
	for _, w := range []string{
		"t.yaml:3:8: source.dsn: environment variable HOST is not set",
		"t.yaml:7:35: events[0].operations[1]: environment variable OP2 is not set",
		"t.yaml:16:10: api.keys[0]: environment variable API_KEY is not set",
	} {
		if !strings.Contains(got, w) {
			t.Errorf("missing %q in\n%s", w, got)
		}
	}
	if strings.Contains(got, "required") || strings.Contains(got, "is empty") {
		t.Errorf("follow-up noise:\n%s", got)
	}
}

func TestCatalog(t *testing.T) {
	t.Parallel()
	cfg := &Config{Events: []Rule{
		{Event: "b.one", Table: "t1"},
		{Event: "a.two", Table: "t2", Description: "two"},
		{Event: "b.one", Table: "t3", Description: "one, later"},
	}}
	want := []CatalogEntry{{"b.one", "one, later", "t1"}, {"a.two", "two", "t2"}}
	if got := cfg.Catalog(); !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v want %+v", got, want)
	}
}

func TestSecretNeverInErrors(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"whsec_c2hvcnQtc2VjcmV0", "whsec_!!!!notbase64secretvalue", "plainsecretvalue123"} {
		_, err := DecodeSecret(s)
		if err == nil || strings.Contains(err.Error(), s) || strings.Contains(err.Error(), s[6:]) {
			t.Errorf("DecodeSecret(%q) = %v", s, err)
		}
	}
	key, err := DecodeSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil || len(key) != 24 {
		t.Errorf("good secret: %d bytes, %v", len(key), err)
	}
}

func TestAliasBomb(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString("x-a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i < 10; i++ {
		b.WriteString("x-a" + string(rune('0'+i)) + ": &a" + string(rune('0'+i)) + " [")
		for j := 0; j < 10; j++ {
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString("*a" + string(rune('0'+i-1)))
		}
		b.WriteString("]\n")
	}
	b.WriteString("source: {dsn: d}\nevents: [{event: a.b, table: t, operations: [insert]}]\ndelivery: {allow: *a9}\n")
	_, err := Parse("bomb.yaml", []byte(b.String()), nil)
	// One error, at the first anchor whose expansion passes the bound
	// (x-a4: 10^5 scalars), not one per element of the bomb.
	want := "bomb.yaml:5:7: x-a4: document too large: aliases expand this value to more than 100000 nodes"
	if err == nil || err.Error() != want {
		t.Fatalf("alias bomb:\n got  %v\n want %s", err, want)
	}

	// 301 aliases of 401 nodes each: no alias alone is too large, so the
	// sequence holding them is named.
	big := "x-a: &a [" + strings.Repeat("x, ", 400) + "x]\n" +
		"x-b: &b [" + strings.Repeat("*a, ", 300) + "*a]\n"
	_, err = Parse("big.yaml", []byte("source: {dsn: d}\n"+big), nil)
	if want := "big.yaml:3:6: x-b: document too large"; err == nil || !strings.HasPrefix(err.Error(), want) || strings.Count(err.Error(), "\n") != 0 {
		t.Errorf("big alias:\n got  %v\n want %s…", err, want)
	}
}

// TestAliasCycle: yaml.v3 lets an anchor contain an alias to itself; the
// loader must refuse it with one error instead of recursing.
func TestAliasCycle(t *testing.T) {
	t.Parallel()
	for src, want := range map[string]string{
		"source: {dsn: d}\nx-a: &a\n  b: [*a]\n":                                "c.yaml:3:7: alias *a refers to a value that contains it",
		"source: &s\n  dsn: d\n  <<: *s\n":                                      "c.yaml:3:7: alias *s refers to a value that contains it",
		"events: &e [{event: a.b, table: t, operations: [insert], data: *e}]\n": "c.yaml:1:64: alias *e refers to a value that contains it",
	} {
		_, err := Parse("c.yaml", []byte(src), nil)
		if err == nil || err.Error() != want {
			t.Errorf("%q:\n got  %v\n want %s", src, err, want)
		}
	}
}

// TestSyntaxErrorLines: yaml.v3 prints parser errors with a 0-based line
// and some with none; every message here names the 1-based line.
func TestSyntaxErrorLines(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ src, want string }{
		{"source:\n  dsn: x\n events: [\n", "s.yaml:3: invalid YAML: did not find expected key"},
		{"a: b: c\n", "s.yaml:1: invalid YAML: mapping values are not allowed in this context"},
		{"a: 1\n\tb: 2\n", "s.yaml:2: invalid YAML: found a tab character that violates indentation"},
		{"source:\n  dsn: d\nevents: *nope\n", "s.yaml:3: invalid YAML: unknown anchor 'nope' referenced"},
		{"- a\nb: 1\n", "s.yaml:2: invalid YAML: did not find expected '-' indicator"},
		// An unquoted ${VAR} in a flow collection is invalid YAML, so it
		// cannot be expanded after parsing; the message says what to write.
		{"source:\n  dsn: d\nx: {c: ${X}}\n", `s.yaml:3: invalid YAML: did not find expected ',' or '}' (inside [...] or {...} write a variable in quotes: "${VAR}")`},
		{"source:\n  dsn: d\nx: [\n  1,\n  ${X}]\n", `s.yaml:3: invalid YAML: did not find expected ',' or ']' (inside [...] or {...} write a variable in quotes: "${VAR}")`},
	} {
		_, err := Parse("s.yaml", []byte(tc.src), nil)
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q:\n got  %v\n want %s", tc.src, err, tc.want)
		}
	}
}

// TestMisspeltKeyNoFollowUp: the key a misspelling probably meant is not
// also reported as missing, but it still is checked when it is written.
func TestMisspeltKeyNoFollowUp(t *testing.T) {
	t.Parallel()
	for src, want := range map[string][]string{
		"sourc:\n  dsn: d\nevents: [{event: a.b, table: t, operations: [insert]}]\n": {
			`m.yaml:1:1: sourc: unknown key (did you mean "source"?)`,
		},
		"source: {dsn: d}\nevents: [{event: a.b, tabel: t, operations: [insert]}]\n": {
			`m.yaml:2:23: events[0].tabel: unknown key (did you mean "table"?)`,
		},
		"source: {dsn: d}\nevents: [{event: a.b, table: a.b.c, tabel: t, operations: [insert]}]\n": {
			`m.yaml:2:30: events[0].table: must be "table" or "schema.table", got "a.b.c"`,
			`m.yaml:2:37: events[0].tabel: unknown key (did you mean "table"?)`,
		},
		"source: {dsn: d}\nevents: [{event: a.b, tabel: t, operation: [insert]}]\n": {
			`m.yaml:2:23: events[0].tabel: unknown key (did you mean "table"?)`,
			`m.yaml:2:33: events[0].operation: unknown key (did you mean "operations"?)`,
		},
	} {
		_, err := Parse("m.yaml", []byte(src), nil)
		if got := fmt.Sprint(err); got != strings.Join(want, "\n") {
			t.Errorf("%q:\n got  %s\n want %s", src, got, strings.Join(want, "\n"))
		}
	}
}

func FuzzLoad(f *testing.F) {
	files, _ := filepath.Glob("../testdata/config/*.yaml")
	samples, _ := filepath.Glob("../testdata/*/walhook.yaml")
	for _, file := range append(files, samples...) {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("x-a: &a\n  b: [*a]\n"))
	f.Add([]byte("x-a: &a [x, x, x]\nx-b: &b [*a, *a, *a]\nsource: {dsn: d, <<: *b}\n"))
	f.Add([]byte("source: {dsn: d}\nevents: [{event: a.b, table: t, operations: [${OP}]}]\n"))
	lookup := env(map[string]string{"DATABASE_URL": "postgres://x@y/z", "WALHOOK_API_KEY": "k-0123456789abcdef"})
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data, lookup)
		if err == nil {
			if cfg == nil {
				t.Fatal("nil config without error")
			}
			if verr := cfg.Validate(); verr != nil {
				t.Fatalf("loaded config fails Validate: %v", verr)
			}
			return
		}
		var errs *Errors
		if !errors.As(err, &errs) || len(errs.Errs) == 0 {
			t.Fatalf("error is not *Errors: %v", err)
		}
		for _, e := range errs.Errs {
			if e.Pos.File != "fuzz.yaml" || e.Pos.Line < 1 {
				t.Fatalf("error without position: %q", e.Error())
			}
		}
	})
}

// docsPath is the configuration reference; the tests below keep it true.
const docsPath = "../docs/configuration.md"

// TestDocsExample loads the annotated example of the reference.
func TestDocsExample(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(docsPath)
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok1 := strings.Cut(string(b), "<!-- full example")
	_, rest, ok2 := strings.Cut(rest, "```yaml\n")
	block, _, ok3 := strings.Cut(rest, "```\n")
	if !ok1 || !ok2 || !ok3 {
		t.Fatal("no full example in " + docsPath)
	}
	cfg, err := Parse("example.yaml", []byte(block), env(map[string]string{
		"DATABASE_URL":       "postgres://walhook@localhost/app",
		"OPS_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
		"WALHOOK_API_KEY":    "test-key-0123456789abcdef",
		"DASHBOARD_API_KEY":  "dashboard-key-0123456789",
	}))
	if err != nil {
		t.Fatalf("the documented example does not load:\n%v", err)
	}
	if len(cfg.Events) != 4 || len(cfg.Events[0].Data) != 3 || cfg.Store.DSN != cfg.Source.DSN ||
		len(cfg.API.Keys) != 2 || cfg.API.Keys[0].Name != "key1" {
		t.Errorf("example loaded as %+v", cfg)
	}
}

// TestReadmeExample loads the configuration sketch of the README.
func TestReadmeExample(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok1 := strings.Cut(string(b), "<!-- README example")
	_, rest, ok2 := strings.Cut(rest, "```yaml\n")
	block, _, ok3 := strings.Cut(rest, "```\n")
	if !ok1 || !ok2 || !ok3 {
		t.Fatal("no configuration example in the README")
	}
	cfg, err := Parse("README.md", []byte(block), env(map[string]string{
		"DATABASE_URL":    "postgres://walhook@localhost/app",
		"OPS_SECRET":      "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
		"WALHOOK_API_KEY": "test-key-0123456789abcdef",
	}))
	if err != nil {
		t.Fatalf("the README's example does not load:\n%v", err)
	}
	if len(cfg.Events) != 1 || len(cfg.Endpoints) != 1 || len(cfg.API.Keys) != 1 || cfg.Source.DSN != "postgres://walhook@localhost/app" {
		t.Errorf("README example loaded as %+v", cfg)
	}
}

// TestDocsReference checks that every key of Config has a row in the
// reference, and that every default written there as a single literal is
// what the loader fills in.
func TestDocsReference(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(docsPath)
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{} // key path → default cell
	for _, line := range strings.Split(string(b), "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 5 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			continue
		}
		rows[strings.Trim(strings.TrimSpace(cells[1]), "`")] = strings.TrimSpace(cells[3])
	}
	var paths []string
	keyPaths(reflect.TypeOf(Config{}), "", &paths)
	for _, p := range paths {
		if _, ok := rows[p]; !ok {
			t.Errorf("%s: no row in %s", p, docsPath)
		}
	}

	const base = "source:\n  dsn: postgres://walhook@localhost/app\nevents: [{event: a.b, table: t, operations: [insert]}]\n"
	defaults, err := Parse("d.yaml", []byte(base), nil)
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for path, def := range rows {
		lit, ok := strings.CutPrefix(def, "`")
		if !ok || !strings.HasSuffix(lit, "`") || strings.Count(def, "`") != 2 || strings.Contains(path, "[") {
			continue // "—", "**required**", or a default described in words
		}
		lit = strings.TrimSuffix(lit, "`")
		if _, isKey := rows[lit]; isKey || strings.Contains(lit, "<") {
			continue // store.dsn defaults to source.dsn; user_agent names the version
		}
		// Write the documented default explicitly; it must load as the
		// value the loader fills in when the key is absent.
		parts := strings.Split(path, ".")
		var doc strings.Builder
		for i, k := range parts {
			doc.WriteString(strings.Repeat("  ", i) + k + ":")
			if i < len(parts)-1 {
				doc.WriteString("\n")
			}
		}
		doc.WriteString(" " + lit + "\n")
		src := doc.String()
		if parts[0] != "source" {
			src = base + src
		} else {
			src = strings.Replace(base, "source:\n", src, 1)
		}
		cfg, err := Parse("d.yaml", []byte(src), nil)
		if err != nil {
			t.Errorf("%s: documented default %s does not load: %v", path, def, err)
			continue
		}
		got, want := valueAt(reflect.ValueOf(*cfg), parts), valueAt(reflect.ValueOf(*defaults), parts)
		if !reflect.DeepEqual(got.Interface(), want.Interface()) {
			t.Errorf("%s: documented default %s, loader's default %v", path, def, want)
		}
		checked++
	}
	if checked < 28 {
		t.Errorf("only %d defaults checked; is the table format still | `key` | type | default | meaning |?", checked)
	}
}

// keyPaths lists the YAML key paths of t: "source.dsn", "events[].table".
func keyPaths(t reflect.Type, prefix string, out *[]string) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		p := join(prefix, name)
		ft := f.Type
		switch {
		case ft.Kind() == reflect.Struct:
			keyPaths(ft, p, out)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct && ft.Elem() != dataFieldType:
			if prefix != "" { // events and endpoints are sections, api.keys a row
				*out = append(*out, p)
			}
			keyPaths(ft.Elem(), p+"[]", out)
		default:
			*out = append(*out, p)
		}
	}
}

// valueAt follows YAML key names from v.
func valueAt(v reflect.Value, keys []string) reflect.Value {
	for _, k := range keys {
		for i := 0; i < v.NumField(); i++ {
			if name, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("yaml"), ","); name == k {
				v = v.Field(i)
				break
			}
		}
	}
	return v
}

// TestNoSecretsInMessages: values that may hold a password are described,
// not echoed.
func TestNoSecretsInMessages(t *testing.T) {
	t.Parallel()
	for _, src := range []string{
		"source: postgres://u:hunter2@db/app\nevents: [{event: a.b, table: t, operations: [insert]}]\n",
		"source:\n  dsn: postgres://u:hunter2${X@db/app\nevents: [{event: a.b, table: t, operations: [insert]}]\n",
		// A keyword/value DSN, or a URL that does not parse, in the wrong
		// place; a ${…} whose inside is part of a password.
		"source: \"host=db user=u password=hunter2\"\nevents: [{event: a.b, table: t, operations: [insert]}]\n",
		"source: {dsn: postgres://walhook@db/app}\nstore: \"postgres://u:p%zzhunter2@db/app\"\nevents: [{event: a.b, table: t, operations: [insert]}]\n",
		"source:\n  dsn: postgres://u:hun${t-hunter2}@db/app\nevents: [{event: a.b, table: t, operations: [insert]}]\n",
		"source: {dsn: postgres://walhook@db/app}\nevents: [{event: a.b, table: t, operations: [insert]}]\nendpoints: whsec_hunter2hunter2hunter2hunter2\n",
		"source:\n  dsn: postgres://u:${1x:-hunter2}@db/app\nevents: [{event: a.b, table: t, operations: [insert]}]\n",
	} {
		_, err := Parse("p.yaml", []byte(src), nil)
		if err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%q: %v", src, err)
		}
	}
}

// A URL that does not parse is refused without repeating it: endpoint
// URLs often carry a token.
func TestBadURLNotEchoed(t *testing.T) {
	t.Parallel()
	src := "source:\n  dsn: postgres://walhook@localhost/app\nevents: [{event: a.b, table: t, operations: [insert]}]\n" +
		"endpoints:\n  - {id: ops, url: \"https://hooks.example.com/T0/tok3n-s3cret%zz\", secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw}\n"
	_, err := Parse("c.yaml", []byte(src), nil)
	if err == nil || !strings.Contains(err.Error(), "endpoints[0].url: not a URL") {
		t.Fatalf("err = %v, want endpoints[0].url: not a URL", err)
	}
	if strings.Contains(err.Error(), "tok3n-s3cret") {
		t.Fatalf("the error repeats the URL: %v", err)
	}
}

// walhook's commands bound each connection attempt and name their
// sessions (BoundConnects): a DSN without connect_timeout gets
// DefaultConnectTimeout and one without application_name "walhook", in
// either form; one that sets its own keeps it.
func TestBoundConnects(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"postgres://u@db/app", "postgres://u@db/app?connect_timeout=10&application_name=walhook"},
		{"postgres://u@db/app?sslmode=require", "postgres://u@db/app?sslmode=require&connect_timeout=10&application_name=walhook"},
		{"postgresql://u@db/app?connect_timeout=3&application_name=sync", "postgresql://u@db/app?connect_timeout=3&application_name=sync"},
		{"host=db dbname=app", "application_name=walhook connect_timeout=10 host=db dbname=app"},
		{"host=db connect_timeout=2", "application_name=walhook connect_timeout=10 host=db connect_timeout=2"},
		{"host=db password=", "application_name=walhook connect_timeout=10 host=db password="},
		{"postgres://u@%2Fvar%2Frun%2Fpostgresql/app", "postgres://u@%2Fvar%2Frun%2Fpostgresql/app?connect_timeout=10&application_name=walhook"},
		{"postgres://u@[::1]:5432,[::2]:5432/app?target_session_attrs=read-write", "postgres://u@[::1]:5432,[::2]:5432/app?target_session_attrs=read-write&connect_timeout=10&application_name=walhook"},
		{"postgres://u@db/app?service=prod", "postgres://u@db/app?service=prod"},
		{"service=prod", "service=prod"},
	} {
		c := &Config{Source: Source{DSN: tc.in}, Store: Store{DSN: tc.in}}
		c.BoundConnects()
		if c.Source.DSN != tc.want || c.Store.DSN != tc.want {
			t.Errorf("%q: source %q, store %q, want %q", tc.in, c.Source.DSN, c.Store.DSN, tc.want)
		}
	}
}

// A file that never ends (--config /dev/zero, a log file named by
// mistake) is refused once it passes MaxFileSize, not read until the
// machine runs out of memory.
func TestLoadRefusesAHugeFile(t *testing.T) {
	t.Parallel()
	f := filepath.Join(t.TempDir(), "huge.yaml")
	if err := os.WriteFile(f, []byte("# "+strings.Repeat("x", MaxFileSize)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(f, env(nil))
	if err == nil || !strings.Contains(err.Error(), f+": larger than 1 MiB") {
		t.Fatalf("err = %v, want the size refused", err)
	}
}

// A --config that names a missing file or a directory says so, with the
// path.
func TestLoadRefusesWhatIsNotAFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	missing := filepath.Join(dir, "walhook.yaml")
	for path, want := range map[string]string{
		missing: "read config: open " + missing + ": no such file or directory",
		dir:     "read config: read " + dir + ": is a directory",
	} {
		cfg, err := Load(path, env(nil))
		if err == nil || err.Error() != want || cfg != nil {
			t.Errorf("Load(%s) = %v, %v; want the error %q", path, cfg, err, want)
		}
	}
}

// A keyword/value DSN with a line break at an end is read as the same DSN
// without it (libpq and pgx take line breaks there for the blanks between
// settings): a DSN written as a YAML block (|, which keeps the last line
// break) or read from a file with its newline works and loads. Only a
// URL DSN is refused for it (dsn.bad.yaml): there the line break becomes
// part of the last value.
func TestKeywordDSNWithLineBreaksLoads(t *testing.T) {
	t.Parallel()
	data := []byte(`source:
  dsn: |
    host=localhost dbname=app
    user=walhook sslmode=disable
store:
  dsn: ${STORE_DSN}
events:
  - event: problem.created
    table: problem_reports
    operations: [insert]
`)
	cfg, err := Parse("kv.yaml", data, env(map[string]string{"STORE_DSN": "\r\nhost=localhost dbname=store\r\n"}))
	if err != nil {
		t.Fatalf("a keyword/value DSN with line breaks at its ends refused:\n%v", err)
	}
	if !strings.HasSuffix(cfg.Source.DSN, "\n") {
		t.Fatalf("source.dsn = %q: the test wants its line break kept", cfg.Source.DSN)
	}
	for dsn, db := range map[string]string{cfg.Source.DSN: "app", cfg.Store.DSN: "store"} {
		pc, err := pgconn.ParseConfig(dsn)
		if err != nil {
			t.Errorf("%q: %v", dsn, err)
		} else if pc.Database != db {
			t.Errorf("%q: database %q, want %q", dsn, pc.Database, db)
		}
	}
}
