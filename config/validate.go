package config

import (
	"fmt"
	"net"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/walhook/walhook/internal/hookurl"
	"github.com/walhook/walhook/internal/whsec"
)

var (
	eventNameRe  = regexp.MustCompile(`^[a-z0-9_]+(\.[a-z0-9_]+)*$`)
	slotNameRe   = regexp.MustCompile(`^[a-z0-9_]{1,63}$`) // PostgreSQL's rule for slot names
	endpointIDRe = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
	hostNameRe   = regexp.MustCompile(`^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$`)
)

// Signing key lengths accepted after base64 decoding: the signer's
// (internal/whsec, shared with dispatch).
const (
	MinSecretBytes = whsec.MinBytes
	MaxSecretBytes = whsec.MaxBytes
)

// MinAPIKeyLen is the shortest admin API key accepted.
const MinAPIKeyLen = 16

// Validate checks a decoded, defaulted Config. Load calls it; call it again
// after changing a Config in code. Positions come from Rule.Pos,
// Endpoint.Pos and DataField.Pos, or the file alone for other keys.
func (c *Config) Validate() error {
	col := &collector{file: c.File}
	d := newDecoder(col)
	for i, r := range c.Events {
		d.pos[index("events", i)] = r.Pos
		for j, f := range r.Data {
			d.pos[index(index("events", i)+".data", j)] = f.Pos
		}
	}
	for i, e := range c.Endpoints {
		d.pos[index("endpoints", i)] = e.Pos
	}
	validate(c, d, col)
	return col.err()
}

// validator reports problems at the position of the key path, or of its
// nearest written ancestor when the key itself is missing.
type validator struct {
	d *decoder
	c *collector
}

func (v *validator) at(path string) Pos {
	for p := path; ; {
		if pos, ok := v.d.pos[p]; ok && pos.Line > 0 {
			return pos
		}
		if p == "" {
			return Pos{File: v.c.file}
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			i = 0
		}
		p = p[:i]
	}
}

func (v *validator) errf(path, format string, args ...any) {
	v.c.add(v.at(path), path, format, args...)
}

func validate(c *Config, d *decoder, col *collector) {
	v := &validator{d: d, c: col}
	v.source(c)
	v.store(c)
	v.mapping(c)
	v.rules(c)
	v.endpoints(c)
	v.delivery(c)
	v.api(c)
	switch hb := c.Source.HeartbeatInterval.D(); {
	case c.CPU.MaxLag <= 0:
		v.errf("cpu.max_lag", "must be positive, got %s (to never yield the CPU, set cpu.yield: false)", c.CPU.MaxLag.D())
	case c.CPU.Yield && hb > 0 && c.CPU.MaxLag.D() < 2*hb:
		// Lag is read from the commit times walhook sees; on an idle source
		// only heartbeats bring new ones.
		v.errf("cpu.max_lag", "must be at least twice source.heartbeat_interval (%s), got %s: "+
			"an idle source would look that far behind between heartbeats", hb, c.CPU.MaxLag.D())
	}
	v.log(c)
}

func (v *validator) source(c *Config) {
	s := c.Source
	if strings.TrimSpace(s.DSN) == "" {
		v.errf("source.dsn", "required: the PostgreSQL connection string of the source database")
	} else {
		v.dsnEnds("source.dsn", s.DSN)
	}
	if !slotNameRe.MatchString(s.Slot) {
		v.errf("source.slot", "must be 1 to 63 characters of a-z, 0-9 and _ (PostgreSQL's rule for slot names), got %q", s.Slot)
	}
	if s.Publication == "" || len(s.Publication) > 63 {
		v.errf("source.publication", "must be a name of 1 to 63 bytes (PostgreSQL's limit; a non-ASCII character takes 2 to 4), got %q (%d bytes)", s.Publication, len(s.Publication))
	}
	if s.HeartbeatInterval < 0 {
		v.errf("source.heartbeat_interval", "must not be negative (0 disables heartbeats), got %s", s.HeartbeatInterval.D())
	}
	if s.StatusInterval <= 0 {
		v.errf("source.status_interval", "must be positive, got %s", s.StatusInterval.D())
	}
	if s.MaxChunkChanges < 1 {
		v.errf("source.max_chunk_changes", "must be at least 1, got %d", s.MaxChunkChanges)
	}
}

// dsnEnds refuses a URL DSN with a line break at an end: it would become
// part of the last value (sslmode "disable\n" is invalid, database "app\n"
// does not exist), and messages cannot show the DSN to make it visible.
// A keyword/value DSN reads line breaks as the blanks between settings,
// so one written as a YAML block (|) or read from a file with its newline
// works as it is.
func (v *validator) dsnEnds(path, dsn string) {
	bare := strings.Trim(dsn, "\r\n")
	url := strings.HasPrefix(bare, "postgres://") || strings.HasPrefix(bare, "postgresql://")
	if url && bare != dsn {
		v.errf(path, "has a line break at its start or end (a value read from a file with its newline?); remove it")
	}
}

func (v *validator) store(c *Config) {
	if c.Store.DSN != c.Source.DSN {
		v.dsnEnds("store.dsn", c.Store.DSN)
	}
	if c.Store.Schema == "" || len(c.Store.Schema) > 63 {
		v.errf("store.schema", "must be a schema name of 1 to 63 bytes (PostgreSQL's limit; a non-ASCII character takes 2 to 4), got %q (%d bytes)", c.Store.Schema, len(c.Store.Schema))
	}
}

func validEnvelope(e string) bool { return e == EnvelopeAuctionExcellence || e == EnvelopeSNS }

func (v *validator) mapping(c *Config) {
	if !validEnvelope(c.Mapping.Envelope) {
		v.errf("mapping.envelope", "must be %q or %q, got %q", EnvelopeAuctionExcellence, EnvelopeSNS, c.Mapping.Envelope)
	}
	if c.Mapping.Domain != "" && !slices.ContainsFunc(c.Events, func(r Rule) bool { return r.Envelope == EnvelopeSNS }) {
		// Only sns rules read it; with none it would do nothing.
		v.errf("mapping.domain", "applies to the %q envelope only, and no rule uses it (remove domain, or set envelope: %s)", EnvelopeSNS, EnvelopeSNS)
	}
}

func (v *validator) rules(c *Config) {
	if len(c.Events) == 0 {
		v.errf("events", "required: at least one event rule")
		return
	}
	type first struct {
		envelope string
		path     string
		pos      Pos
	}
	byEvent := map[string]first{}
	var shapes []Rule
	for i := range c.Events {
		r := &c.Events[i]
		p := index("events", i)
		v.rule(r, p)
		shape := ruleShape(*r)
		for j, prev := range shapes {
			if reflect.DeepEqual(prev, shape) {
				v.errf(p, "repeats %s (line %d: same event, table, operations, conditions and data): every change would produce the event twice",
					index("events", j), c.Events[j].Pos.Line)
				break
			}
		}
		shapes = append(shapes, shape)
		if r.Event == "" || !validEnvelope(r.Envelope) {
			continue
		}
		if f, ok := byEvent[r.Event]; ok && f.envelope != r.Envelope {
			v.errf(p+".envelope", "event %q uses envelope %q here but %q at %s (%s); one event type has one body shape", r.Event, r.Envelope, f.envelope, f.pos, f.path)
		} else if !ok {
			byEvent[r.Event] = first{r.Envelope, p, r.Pos}
		}
	}
}

// ruleShape is what a rule does, for finding a rule that repeats another:
// without its description and positions, its table schema-qualified and
// its operations in one order.
func ruleShape(r Rule) Rule {
	r.Pos, r.WhenPos, r.Description = Pos{}, Pos{}, ""
	if !strings.Contains(r.Table, ".") {
		r.Table = "public." + r.Table
	}
	r.Operations = slices.Sorted(slices.Values(r.Operations))
	data := make([]DataField, len(r.Data))
	for i, f := range r.Data {
		f.Pos = Pos{}
		data[i] = f
	}
	r.Data = data
	return r
}

func (v *validator) rule(r *Rule, p string) {
	switch {
	case r.Event == "":
		v.errf(p+".event", "required: the event type, e.g. \"problem.status_changed\"")
	case !eventNameRe.MatchString(r.Event):
		v.errf(p+".event", "must be lowercase dotted segments of a-z, 0-9 and _ (e.g. \"problem.status_changed\"), got %q", r.Event)
	}
	if r.Table == "" {
		v.errf(p+".table", "required: \"table\" or \"schema.table\"")
	} else if _, _, err := SplitTable(r.Table); err != nil {
		v.errf(p+".table", "%v", err)
	}
	ops := map[string]bool{}
	if len(r.Operations) == 0 {
		v.errf(p+".operations", "required: a list of insert, update and/or delete")
	}
	for j, op := range r.Operations {
		switch {
		case op != "insert" && op != "update" && op != "delete":
			v.errf(index(p+".operations", j), "must be insert, update or delete, got %q", op)
		case ops[op]:
			v.errf(index(p+".operations", j), "%q listed twice", op)
		}
		ops[op] = true
	}
	if len(r.Changed) > 0 && !ops["update"] && len(r.Operations) > 0 {
		v.errf(p+".changed", "only applies to updates; add update to operations or remove changed")
	}
	for j, col := range r.Changed {
		if !validColumn(col) {
			v.errf(index(p+".changed", j), "must be a column name (not empty, and with no dot, tab or line break), got %q", col)
		}
	}
	if v.d.set[p+".when"] && strings.TrimSpace(r.When) == "" {
		v.errf(p+".when", "is empty; remove it or write an expression over old and new")
	}
	if r.AuctionID != "" {
		if from, _, err := parseColumnRef(r.AuctionID); err != nil {
			v.errf(p+".auction_id", "%v", err)
		} else {
			v.checkFrom(p+".auction_id", from, ops)
		}
	}
	if r.Domain != "" && r.Envelope != EnvelopeSNS && validEnvelope(r.Envelope) {
		// The other envelope has no domain: the key would do nothing.
		v.errf(p+".domain", "applies to the %q envelope only; this rule's envelope is %q (remove domain, or set envelope: %s)", EnvelopeSNS, r.Envelope, EnvelopeSNS)
	} else if r.Domain != "" {
		if from, _, err := parseColumnRef(r.Domain); err != nil {
			v.errf(p+".domain", "%v", err)
		} else {
			v.checkFrom(p+".domain", from, ops)
		}
	}
	if !validEnvelope(r.Envelope) {
		v.errf(p+".envelope", "must be %q or %q, got %q", EnvelopeAuctionExcellence, EnvelopeSNS, r.Envelope)
	}
	keys := map[string]string{}
	for j, f := range r.Data {
		fp := index(p+".data", j)
		if f.Key == "" {
			continue // decoding already reported it
		}
		if prev, dup := keys[f.Key]; dup {
			v.errf(fp, "data key %q repeats %s", f.Key, prev)
		}
		keys[f.Key] = fp
		if !f.IsConst {
			v.checkFrom(fp, f.From, ops)
		}
	}
}

// checkFrom refuses old.x on insert-only rules and new.x on delete-only
// rules: that row never exists, so the value would always be missing.
func (v *validator) checkFrom(path, from string, ops map[string]bool) {
	switch {
	case from == "old" && ops["insert"] && !ops["update"] && !ops["delete"]:
		v.errf(path, "old.… has no value for inserts (there is no old row)")
	case from == "new" && ops["delete"] && !ops["insert"] && !ops["update"]:
		v.errf(path, "new.… has no value for deletes (there is no new row)")
	}
}

// validColumn: a column name as PostgreSQL stores it, spaces included
// ("Problem Title"); a dot would make new.x ambiguous, and a tab or line
// break is taken for a typo.
func validColumn(s string) bool { return s != "" && !strings.ContainsAny(s, ".\t\n") }

// SplitTable splits "schema.table" or "table" (schema public). Names are
// taken as PostgreSQL stores them (no quoting, no case folding).
func SplitTable(t string) (schema, table string, err error) {
	parts := strings.Split(t, ".")
	switch {
	case len(parts) == 1 && parts[0] != "":
		return "public", parts[0], nil
	case len(parts) == 2 && parts[0] != "" && parts[1] != "":
		return parts[0], parts[1], nil
	}
	return "", "", fmt.Errorf("must be \"table\" or \"schema.table\", got %q", t)
}

func (v *validator) endpoints(c *Config) {
	types := map[string]bool{}
	for _, r := range c.Events {
		types[r.Event] = true
	}
	ids := map[string]string{}
	for i, e := range c.Endpoints {
		p := index("endpoints", i)
		switch {
		case e.ID == "":
			v.errf(p+".id", "required: a stable name for this endpoint")
		case !endpointIDRe.MatchString(e.ID):
			v.errf(p+".id", "must be 1 to 64 characters of A-Z, a-z, 0-9, _, . and -, got %q", e.ID)
		case ids[e.ID] != "":
			v.errf(p+".id", "%q is already the id of %s", e.ID, ids[e.ID])
		default:
			ids[e.ID] = p
		}
		v.endpointURL(p+".url", e.URL)
		v.secret(p+".secret", e.Secret, true)
		for j, ev := range e.Events {
			v.eventRef(index(p+".events", j), ev, types)
		}
		for j, a := range e.Auctions {
			if strings.TrimSpace(a) == "" {
				v.errf(index(p+".auctions", j), "must not be empty")
			}
		}
	}
}

func (v *validator) endpointURL(path, raw string) {
	if raw == "" {
		v.errf(path, "required: the https:// URL webhooks are POSTed to")
		return
	}
	u, err := url.Parse(raw)
	if err != nil {
		v.errf(path, "not a URL: %s", hookurl.ParseProblem(err))
		return
	}
	if u.Scheme == "" {
		v.errf(path, "has no scheme: write it as https://host/path")
		return
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		v.errf(path, "must be an http:// or https:// URL, got scheme %q", u.Scheme)
		return
	}
	if u.Hostname() == "" {
		v.errf(path, "has no host")
	}
	if p := u.Port(); !hookurl.PortOK(p) {
		v.errf(path, "port %s out of range: use 1 to 65535", p)
	}
	if u.User != nil {
		v.errf(path, "must not carry user:password (receivers verify the signature instead)")
	}
}

// secret checks a whsec_ secret without ever printing it.
func (v *validator) secret(path, s string, required bool) {
	if s == "" {
		if required {
			v.errf(path, "required for static endpoints: whsec_ followed by padded base64 of %d to %d random bytes (e.g. `echo whsec_$(openssl rand -base64 32)`)", MinSecretBytes, MaxSecretBytes)
		}
		return
	}
	if _, err := DecodeSecret(s); err != nil {
		v.errf(path, "%v", err)
	}
}

// DecodeSecret returns the signing key of a "whsec_" + base64 secret by
// the rule dispatch.DecodeSecret signs with (whsec.Decode), so a secret
// `walhook check` passes is one `walhook run` accepts. Errors never include
// the secret.
func DecodeSecret(s string) ([]byte, error) {
	return whsec.Decode(s)
}

// eventRef checks an endpoint's event filter: an exact type or "prefix.*"
// matching at least one type of the catalog.
func (v *validator) eventRef(path, ev string, types map[string]bool) {
	if prefix, ok := strings.CutSuffix(ev, ".*"); ok {
		for t := range types {
			if strings.HasPrefix(t, prefix+".") {
				return
			}
		}
		v.errf(path, "%q matches no event type of the rules", ev)
		return
	}
	if !types[ev] {
		v.errf(path, "unknown event type %q (known: %s)", ev, strings.Join(sortedKeys(types), ", "))
	}
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func (v *validator) delivery(c *Config) {
	dl := c.Delivery
	if len(dl.RetrySchedule) == 0 {
		v.errf("delivery.retry_schedule", "must list at least one delay (its length is the number of attempts)")
	}
	for i, d := range dl.RetrySchedule {
		if d < 0 {
			v.errf(index("delivery.retry_schedule", i), "must not be negative, got %s", d.D())
		} else if i == 0 && d != 0 {
			// The dispatcher makes the first attempt as soon as the event
			// is stored and never reads this entry; accepting another value
			// would silently ignore it.
			v.errf(index("delivery.retry_schedule", i), "must be 0s, got %s: the first attempt is made at once (the entry is there so the list reads \"immediately, then +1m, …\"); each later entry is the delay after the attempt before", d.D())
		}
	}
	if !(dl.Jitter >= 0 && dl.Jitter <= 1) {
		v.errf("delivery.jitter", "must be between 0 and 1, got %v", dl.Jitter)
	}
	positive := func(path string, d Duration) {
		if d <= 0 {
			v.errf(path, "must be positive, got %s", d.D())
		}
	}
	atLeast1 := func(path string, n int) {
		if n < 1 {
			v.errf(path, "must be at least 1, got %d", n)
		}
	}
	// The dispatcher reads 0 as "use the default" for these three, so an
	// explicit 0 would silently mean 1h, 24h and 1024 bytes.
	if dl.RetryAfterCap <= 0 {
		v.errf("delivery.retry_after_cap", "must be positive, got %s (to all but ignore Retry-After, use a short cap like 1s)", dl.RetryAfterCap.D())
	}
	positive("delivery.timeout", dl.Timeout)
	atLeast1("delivery.workers", dl.Workers)
	atLeast1("delivery.max_in_flight_per_endpoint", dl.MaxInFlightPerEndpoint)
	atLeast1("delivery.batch_size", dl.BatchSize)
	positive("delivery.lease", dl.Lease)
	if dl.Lease > 0 && dl.Timeout > 0 && dl.Lease <= dl.Timeout {
		v.errf("delivery.lease", "must be longer than delivery.timeout (%s), or a delivery still in flight is claimed again; got %s", dl.Timeout.D(), dl.Lease.D())
	}
	positive("delivery.poll_interval", dl.PollInterval)
	atLeast1("delivery.max_response_body", dl.MaxResponseBody)
	positive("delivery.retention", dl.Retention)
	positive("delivery.disable.window", dl.Disable.Window)
	atLeast1("delivery.disable.min_failed_deliveries", dl.Disable.MinFailedDeliveries)
	if dl.SecretOverlap <= 0 {
		v.errf("delivery.secret_overlap", "must be positive, got %s (to retire a rotated secret almost at once, use 1s)", dl.SecretOverlap.D())
	}
	if strings.ContainsFunc(dl.UserAgent, func(r rune) bool { return unicode.IsControl(r) && r != '\t' }) {
		// Go's HTTP client refuses such a header: every attempt would fail.
		v.errf("delivery.user_agent", "contains a control character (a line break or the like), which no User-Agent header can carry")
	}
	for i, a := range dl.Allow {
		if !validAllow(a) {
			v.errf(index("delivery.allow", i), "must be a CIDR like \"10.0.0.0/8\" or a host name like \"hooks.internal\", got %q", a)
		}
	}
}

func validAllow(a string) bool {
	if strings.Contains(a, "/") {
		_, _, err := net.ParseCIDR(a)
		return err == nil
	}
	if net.ParseIP(a) != nil {
		return true
	}
	return len(a) <= 253 && hostNameRe.MatchString(a)
}

func (v *validator) api(c *Config) {
	a := c.API
	if a.Listen != "" {
		host, port, err := net.SplitHostPort(a.Listen)
		if err != nil {
			v.errf("api.listen", "must be host:port (e.g. \"127.0.0.1:8080\"), or \"off\"; got %q", a.Listen)
		} else if n, perr := strconv.Atoi(port); perr != nil || n < 0 || n > 65535 {
			v.errf("api.listen", "port must be a number 0..65535, got %q", port)
		} else if host != "" && net.ParseIP(host) == nil && !hostNameRe.MatchString(host) {
			v.errf("api.listen", "host must be an IP address or a host name, got %q", host)
		}
	}
	seenKey := map[string]string{}
	seenName := map[string]string{}
	for i, k := range a.Keys {
		p := index("api.keys", i)
		switch {
		case k.Key == "":
			v.errf(p, "key is empty (is its environment variable set to \"\"?)")
		case strings.TrimSpace(k.Key) != k.Key:
			// HTTP drops them from a header value: no request would match.
			v.errf(p, "key has a blank or a line break at its start or end, which no X-API-Key header can carry")
		case strings.ContainsFunc(k.Key, unicode.IsControl):
			v.errf(p, "key contains a control character (a tab, a line break), which no X-API-Key header can carry")
		case len(k.Key) < MinAPIKeyLen:
			v.errf(p, "key is %d characters; use at least %d (e.g. `openssl rand -hex 24`)", len(k.Key), MinAPIKeyLen)
		case seenKey[k.Key] != "":
			v.errf(p, "same key as %s", seenKey[k.Key])
		default:
			seenKey[k.Key] = p
		}
		if prev := seenName[k.Name]; prev != "" {
			v.errf(p, "name %q is already used by %s", k.Name, prev)
		} else {
			seenName[k.Name] = p
		}
	}
	for i, o := range a.Open {
		if !strings.HasPrefix(o, "/") {
			v.errf(index("api.open", i), "must be a path starting with /, got %q", o)
		}
	}
	if a.RateLimits.WritePerMinute < 1 {
		v.errf("api.rate_limits.write_per_minute", "must be at least 1, got %d", a.RateLimits.WritePerMinute)
	}
	if a.RateLimits.ReadPerMinute < 1 {
		v.errf("api.rate_limits.read_per_minute", "must be at least 1, got %d", a.RateLimits.ReadPerMinute)
	}
}

func (v *validator) log(c *Config) {
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		v.errf("log.level", "must be debug, info, warn or error, got %q", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		v.errf("log.format", "must be text or json, got %q", c.Log.Format)
	}
}
