package cdc

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// This file decodes pgoutput (protocol version 1) messages. It does not use
// pglogrepl's parser: that one copies every column into its own allocation
// and does not check lengths, so a short or corrupt message panics. Here
// every read is bounds-checked (the decoder is fuzzed) and tuple values are
// decoded straight from the receive buffer into Values.

// Message kinds of pgoutput protocol version 1 (PostgreSQL docs, "Logical
// Replication Message Formats").
const (
	msgBegin    = 'B'
	msgCommit   = 'C'
	msgOrigin   = 'O'
	msgRelation = 'R'
	msgType     = 'Y'
	msgInsert   = 'I'
	msgUpdate   = 'U'
	msgDelete   = 'D'
	msgTruncate = 'T'
	msgMessage  = 'M'
)

// reader is a bounds-checked cursor over one message. After a short read
// every accessor returns zero values and bad is set; callers check bad once
// at the end.
type reader struct {
	b   []byte
	off int
	bad bool
}

func (r *reader) take(n int) []byte {
	if r.bad || n < 0 || len(r.b)-r.off < n {
		r.bad = true
		return nil
	}
	s := r.b[r.off : r.off+n : r.off+n]
	r.off += n
	return s
}

func (r *reader) u8() byte {
	if s := r.take(1); s != nil {
		return s[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if s := r.take(2); s != nil {
		return binary.BigEndian.Uint16(s)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if s := r.take(4); s != nil {
		return binary.BigEndian.Uint32(s)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if s := r.take(8); s != nil {
		return binary.BigEndian.Uint64(s)
	}
	return 0
}

// cstr reads a NUL-terminated string.
func (r *reader) cstr() string {
	if r.bad {
		return ""
	}
	for i := r.off; i < len(r.b); i++ {
		if r.b[i] == 0 {
			s := string(r.b[r.off:i])
			r.off = i + 1
			return s
		}
	}
	r.bad = true
	return ""
}

// pgEpoch is 2000-01-01 UTC: pgoutput timestamps are microseconds since it.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func (r *reader) time() time.Time {
	us := int64(r.u64())
	return pgEpoch.Add(time.Duration(us) * time.Microsecond)
}

type beginMsg struct {
	FinalLSN   LSN
	CommitTime time.Time
	Xid        uint32
}

type commitMsg struct {
	CommitLSN, EndLSN LSN
	CommitTime        time.Time
}

// decoder holds the relation cache and turns change messages into Changes.
// One decoder belongs to one replication connection: a reconnect starts a
// new one, because relation OIDs announced on the old connection are not
// announced again (pgoutput sends a Relation before the first change of each
// relation on each connection, and again after it changes).
type decoder struct {
	rels  map[uint32]*Relation
	types map[uint32]string // custom type names from Type messages, for errors
	vals  valueDecoder
	slab  []Value
}

func newDecoder(tm *pgtype.Map) *decoder {
	return &decoder{rels: make(map[uint32]*Relation), types: make(map[uint32]string), vals: valueDecoder{tm: tm}}
}

func protoErr(format string, args ...any) error {
	return &ProtocolError{Detail: fmt.Sprintf(format, args...)}
}

func decodeBegin(b []byte) (beginMsg, error) {
	r := reader{b: b, off: 1}
	m := beginMsg{FinalLSN: LSN(r.u64()), CommitTime: r.time(), Xid: r.u32()}
	if r.bad {
		return m, protoErr("short Begin message (%d bytes)", len(b))
	}
	return m, nil
}

func decodeCommit(b []byte) (commitMsg, error) {
	r := reader{b: b, off: 1}
	r.u8() // flags, unused
	m := commitMsg{CommitLSN: LSN(r.u64()), EndLSN: LSN(r.u64()), CommitTime: r.time()}
	if r.bad {
		return m, protoErr("short Commit message (%d bytes)", len(b))
	}
	return m, nil
}

func decodeOrigin(b []byte) (string, error) {
	r := reader{b: b, off: 1}
	r.u64() // origin's commit LSN
	name := r.cstr()
	if r.bad {
		return "", protoErr("short Origin message (%d bytes)", len(b))
	}
	return name, nil
}

// relation decodes a Relation message and replaces the cache entry with a
// new *Relation (never mutating the old one: consumers may still hold
// Changes pointing at it, and mappers may cache per pointer).
func (d *decoder) relation(b []byte) (*Relation, error) {
	r := reader{b: b, off: 1}
	rel := &Relation{OID: r.u32(), Schema: r.cstr(), Name: r.cstr(), ReplicaIdentity: r.u8()}
	n := int(r.u16())
	if r.bad || n > len(b) { // every column takes at least 10 bytes
		return nil, protoErr("short Relation message (%d bytes)", len(b))
	}
	rel.Columns = make([]Column, n)
	for i := range rel.Columns {
		flags := r.u8()
		rel.Columns[i] = Column{Key: flags&1 != 0, Name: r.cstr(), TypeOID: r.u32()}
		r.u32() // type modifier
	}
	if r.bad {
		return nil, protoErr("short Relation message (%d bytes)", len(b))
	}
	d.rels[rel.OID] = rel
	return rel, nil
}

func (d *decoder) typ(b []byte) error {
	r := reader{b: b, off: 1}
	oid := r.u32()
	ns, name := r.cstr(), r.cstr()
	if r.bad {
		return protoErr("short Type message (%d bytes)", len(b))
	}
	d.types[oid] = ns + "." + name
	return nil
}

func (d *decoder) rel(oid uint32) (*Relation, error) {
	rel := d.rels[oid]
	if rel == nil {
		return nil, protoErr("change for relation OID %d before its Relation message", oid)
	}
	return rel, nil
}

// alloc hands out n Values from a shared slab: one allocation per few
// thousand values instead of one per row.
func (d *decoder) alloc(n int) []Value {
	if n > len(d.slab) {
		size := 4096
		if n > size {
			size = n
		}
		d.slab = make([]Value, size)
	}
	v := d.slab[:n:n]
	d.slab = d.slab[n:]
	return v
}

// tuple decodes TupleData for rel. Unchanged TOAST columns ('u') become
// Unavailable here; the caller fills them from an old row if it has one.
// keyOnly marks non-key columns Absent (pgoutput sends them as nulls in a
// 'K' tuple).
func (d *decoder) tuple(r *reader, rel *Relation, keyOnly bool) ([]Value, error) {
	n := int(r.u16())
	if r.bad {
		return nil, protoErr("short tuple in change for %s", rel.Table())
	}
	if n != len(rel.Columns) {
		return nil, protoErr("tuple for %s has %d columns, its Relation announced %d", rel.Table(), n, len(rel.Columns))
	}
	vals := d.alloc(n)
	for i := range vals {
		switch kind := r.u8(); kind {
		case 'n':
			vals[i].State = Null
			if keyOnly && !rel.Columns[i].Key {
				vals[i].State = Absent
			}
		case 'u':
			vals[i].State = Unavailable
		case 't':
			l := r.u32()
			data := r.take(int(l))
			if r.bad || l > uint32(len(r.b)) {
				return nil, protoErr("short value for %s.%s", rel.Table(), rel.Columns[i].Name)
			}
			vals[i] = Value{State: Present, V: d.vals.decode(rel.Columns[i].TypeOID, data)}
		default:
			if r.bad {
				return nil, protoErr("short tuple in change for %s", rel.Table())
			}
			return nil, protoErr("unknown tuple column kind %q for %s.%s", kind, rel.Table(), rel.Columns[i].Name)
		}
	}
	return vals, nil
}

// change decodes an Insert, Update or Delete message into c.
func (d *decoder) change(b []byte, c *Change) error {
	r := reader{b: b, off: 1}
	rel, err := d.rel(r.u32())
	if r.bad {
		return protoErr("short change message (%d bytes)", len(b))
	}
	if err != nil {
		return err
	}
	c.Rel = rel
	kind := r.u8()
	switch b[0] {
	case msgInsert:
		c.Op = OpInsert
		if kind != 'N' {
			return protoErr("insert for %s: tuple kind %q, want 'N'", rel.Table(), kind)
		}
		c.New, err = d.tuple(&r, rel, false)
	case msgUpdate:
		c.Op = OpUpdate
		if kind == 'K' || kind == 'O' {
			c.OldKeyOnly = kind == 'K'
			if c.Old, err = d.tuple(&r, rel, c.OldKeyOnly); err != nil {
				return err
			}
			kind = r.u8()
		}
		if kind != 'N' {
			return protoErr("update for %s: tuple kind %q, want 'N'", rel.Table(), kind)
		}
		if c.New, err = d.tuple(&r, rel, false); err != nil {
			return err
		}
		fillUnchanged(c)
	case msgDelete:
		c.Op = OpDelete
		if kind != 'K' && kind != 'O' {
			return protoErr("delete for %s: tuple kind %q, want 'K' or 'O'", rel.Table(), kind)
		}
		c.OldKeyOnly = kind == 'K'
		c.Old, err = d.tuple(&r, rel, c.OldKeyOnly)
	}
	if err == nil && r.off != len(b) {
		err = protoErr("%d trailing bytes after %s change for %s", len(b)-r.off, c.Op, rel.Table())
	}
	return err
}

// fillUnchanged replaces unchanged TOAST values in the new row by the old
// row's values. PostgreSQL does not re-send a TOASTed value an UPDATE did not
// touch; with REPLICA IDENTITY FULL the old row carries it (flattened by
// ExtractReplicaIdentity), otherwise it stays Unavailable — never null.
func fillUnchanged(c *Change) {
	if c.Old == nil || c.OldKeyOnly {
		return
	}
	for i := range c.New {
		if c.New[i].State == Unavailable {
			c.New[i] = c.Old[i]
		}
	}
}

func (d *decoder) truncate(b []byte, c *Change) error {
	r := reader{b: b, off: 1}
	n := r.u32()
	r.u8() // options: CASCADE, RESTART IDENTITY
	if r.bad || uint64(n)*4 != uint64(len(b)-r.off) {
		return protoErr("malformed Truncate message (%d bytes)", len(b))
	}
	c.Op = OpTruncate
	c.Rels = make([]*Relation, n)
	for i := range c.Rels {
		rel, err := d.rel(r.u32())
		if err != nil {
			return err
		}
		c.Rels[i] = rel
	}
	if n > 0 {
		c.Rel = c.Rels[0]
	}
	return nil
}

// message decodes a logical decoding message; transactional reports whether
// it was emitted with pg_logical_emit_message(true, …).
func decodeMessage(b []byte, c *Change) (transactional bool, err error) {
	r := reader{b: b, off: 1}
	flags := r.u8()
	c.LSN = LSN(r.u64())
	c.Prefix = r.cstr()
	n := r.u32()
	content := r.take(int(n))
	if r.bad || r.off != len(b) {
		return false, protoErr("malformed logical decoding Message (%d bytes)", len(b))
	}
	c.Op = OpMessage
	c.Content = append([]byte(nil), content...)
	return flags&1 != 0, nil
}
