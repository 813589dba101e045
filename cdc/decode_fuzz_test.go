package cdc

import (
	"encoding/binary"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
)

// fuzzRelation is announced to the decoder before every fuzzed message.
func fuzzRelation() []byte {
	b := []byte{msgRelation}
	b = binary.BigEndian.AppendUint32(b, 16384)
	b = append(b, "public\x00t\x00"...)
	b = append(b, 'd')
	cols := []struct {
		key  byte
		name string
		oid  uint32
	}{{1, "id", pgtype.Int8OID}, {0, "n", pgtype.NumericOID}, {0, "ts", pgtype.TimestamptzOID},
		{0, "j", pgtype.JSONBOID}, {0, "a", pgtype.Int4ArrayOID}, {0, "by", pgtype.ByteaOID}, {0, "f", pgtype.Float8OID}}
	b = binary.BigEndian.AppendUint16(b, uint16(len(cols)))
	for _, c := range cols {
		b = append(b, c.key)
		b = append(b, c.name+"\x00"...)
		b = binary.BigEndian.AppendUint32(b, c.oid)
		b = binary.BigEndian.AppendUint32(b, 0xffffffff)
	}
	return b
}

func tupleBytes(vals ...string) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(vals)))
	for _, v := range vals {
		switch v {
		case "<null>":
			b = append(b, 'n')
		case "<toast>":
			b = append(b, 'u')
		default:
			b = append(b, 't')
			b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
			b = append(b, v...)
		}
	}
	return b
}

func FuzzDecodeTuple(f *testing.F) {
	row := tupleBytes("42", "1.50", "2024-03-01 11:00:00.5+00", `{"a":1}`, "{1,NULL,3}", `\x00ff`, "NaN")
	rel := binary.BigEndian.AppendUint32(nil, 16384)
	f.Add(append(append([]byte{msgInsert}, rel...), append([]byte{'N'}, row...)...))
	f.Add(append(append(append([]byte{msgUpdate}, rel...), append([]byte{'O'}, row...)...), append([]byte{'N'}, tupleBytes("42", "<null>", "<toast>", "<null>", "<null>", "<null>", "1e300")...)...))
	f.Add(append(append([]byte{msgUpdate}, rel...), append([]byte{'K'}, tupleBytes("42", "<null>", "<null>", "<null>", "<null>", "<null>", "<null>")...)...))
	f.Add(append(append([]byte{msgDelete}, rel...), append([]byte{'K'}, row...)...))
	f.Add(append([]byte{msgTruncate, 0, 0, 0, 1, 0}, rel...))
	f.Add(append([]byte{msgMessage, 1, 0, 0, 0, 0, 0, 0, 0, 1}, "app\x00\x00\x00\x00\x02hi"...))
	f.Add(fuzzRelation())
	f.Fuzz(func(t *testing.T, msg []byte) {
		d := newDecoder(pgtype.NewMap())
		if _, err := d.relation(fuzzRelation()); err != nil {
			t.Fatal(err)
		}
		if len(msg) == 0 {
			return
		}
		var c Change
		var err error
		switch msg[0] {
		case msgInsert, msgUpdate, msgDelete:
			err = d.change(msg, &c)
		case msgTruncate:
			err = d.truncate(msg, &c)
		case msgMessage:
			_, err = decodeMessage(msg, &c)
		case msgRelation:
			_, err = d.relation(msg)
		case msgType:
			err = d.typ(msg)
		case msgBegin:
			_, err = decodeBegin(msg)
		case msgCommit:
			_, err = decodeCommit(msg)
		case msgOrigin:
			_, err = decodeOrigin(msg)
		default:
			return
		}
		if err != nil {
			return
		}
		for _, row := range [][]Value{c.New, c.Old} {
			if row != nil && len(row) != len(c.Rel.Columns) {
				t.Fatalf("%d values for %d columns", len(row), len(c.Rel.Columns))
			}
			for i, v := range row {
				if v.State == Present && v.V == nil {
					t.Fatalf("column %d Present with nil value", i)
				}
				if v.State == Absent && !c.OldKeyOnly {
					t.Fatalf("column %d Absent outside a key-only row", i)
				}
			}
		}
	})
}

// TestDecodeRejectsMalformed checks the decoder's errors on a few hand-made
// broken messages (the fuzzer checks it never panics).
func TestDecodeRejectsMalformed(t *testing.T) {
	d := newDecoder(pgtype.NewMap())
	if _, err := d.relation(fuzzRelation()); err != nil {
		t.Fatal(err)
	}
	rel := binary.BigEndian.AppendUint32(nil, 16384)
	for name, msg := range map[string][]byte{
		"unknown relation": append([]byte{msgInsert, 0, 0, 0, 9, 'N'}, tupleBytes("1")...),
		"column count":     append(append([]byte{msgInsert}, rel...), append([]byte{'N'}, tupleBytes("1")...)...),
		"short value":      append(append([]byte{msgInsert}, rel...), 'N', 0, 7, 't', 0, 0, 0, 9, '1'),
		"binary kind":      append(append([]byte{msgInsert}, rel...), 'N', 0, 7, 'b', 0, 0, 0, 1, '1'),
		"bad tuple kind":   append(append([]byte{msgDelete}, rel...), 'N'),
	} {
		var c Change
		err := d.change(msg, &c)
		wantErr(t, err, ErrProtocol)
		t.Logf("%s: %v", name, err)
	}
	ss := &session{dec: d}
	err := ss.handle(0x1234, []byte{'S', 0, 0, 0, 1, 0}) // protocol v2 Stream Start
	wantErr(t, err, ErrProtocol)
	if !permanent(err) {
		t.Fatal("an unknown message type must stop the stream")
	}
	wantErr(t, ss.handle(0, []byte{msgInsert}), ErrProtocol) // a change outside a transaction
	if _, err := decodeBegin([]byte{msgBegin, 1, 2}); err == nil {
		t.Fatal("short Begin accepted")
	}
}
