package mapper

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"time"
)

// Envelope is the body shape of a webhook.
type Envelope string

const (
	// EnvelopeAuctionExcellence is seed 000's body:
	// {event, timestamp (ISO 8601 UTC, ms), webhook_id (UUID), auction_id, data}.
	EnvelopeAuctionExcellence Envelope = "auction-excellence"
	// EnvelopeSNS is seed 004's body:
	// {event, auctionId, domain, data, timestamp (unix s), id ("evt_…")}.
	EnvelopeSNS Envelope = "sns"
)

// Valid reports whether e is a known envelope.
func (e Envelope) Valid() bool { return e == EnvelopeAuctionExcellence || e == EnvelopeSNS }

// Event is one business event produced from a row change. It carries no
// delivery id: the dispatcher derives one per endpoint (DeliveryID) and
// renders the body with it (Body), so every endpoint gets its own stable id
// and a retry of the same delivery gets the same bytes.
type Event struct {
	// ID is deterministic from (system id, xid, commit LSN, position, rule),
	// so a replay of the same transaction yields the same id.
	ID         string
	Type       string
	AuctionID  string // "" when the rule has none
	Domain     string // sns envelope only
	Envelope   Envelope
	OccurredAt time.Time       // the transaction's commit time, UTC
	Data       json.RawMessage // the data object, exact bytes

	// Provenance, for logs and the delivery log.
	Table    string
	Position int // position of the change in its transaction
	Rule     int // index of the rule in the config
}

// DeliveryID is the id of the delivery of event eventID to endpoint
// endpointID: the X-Webhook-ID header and the body's webhook_id / id. It is
// deterministic, so retries, restarts and replays keep it, and differs per
// endpoint. auction-excellence ids are UUIDs (version 8, name-based);
// sns ids are "evt_" + 24 hex digits. For an ordered event id (EventID)
// they begin with the event's commit LSN (its low 48 bits in a UUID, 32
// in an sns id), so that they too grow at one end of the store's indexes;
// the rest is a hash of the event id and the endpoint.
func DeliveryID(env Envelope, eventID, endpointID string) string {
	lsn, ok := OrderedEventLSN(eventID)
	if !ok {
		return legacyDeliveryID(env, eventID, endpointID)
	}
	h := sha256.Sum256([]byte(eventID + "\x00" + endpointID))
	var l [8]byte
	binary.BigEndian.PutUint64(l[:], uint64(lsn))
	if env == EnvelopeSNS {
		copy(h[0:4], l[4:8])
		return "evt_" + hex.EncodeToString(h[:12])
	}
	copy(h[0:6], l[2:8])
	return uuidV8(h)
}

// legacyDeliveryID is DeliveryID of an unordered event id (one walhook
// stored before ordered ids, a test send's): a hash alone.
func legacyDeliveryID(env Envelope, eventID, endpointID string) string {
	h := sha256.Sum256([]byte(eventID + "\x00" + endpointID))
	if env == EnvelopeSNS {
		return "evt_" + hex.EncodeToString(h[:12])
	}
	return uuidV8(h)
}

// uuidV8 renders h's first 16 bytes as a version 8 UUID.
func uuidV8(h [32]byte) string {
	h[6] = (h[6] & 0x0f) | 0x80 // version 8
	h[8] = (h[8] & 0x3f) | 0x80 // RFC 4122 variant
	var b [36]byte
	hex.Encode(b[0:8], h[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], h[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], h[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], h[8:10])
	b[23] = '-'
	hex.Encode(b[24:36], h[10:16])
	return string(b[:])
}

// Body renders the webhook body for one delivery. Keys come in the seed's
// order; the result is the same bytes every time for the same event and id.
func (e *Event) Body(deliveryID string) []byte {
	data := e.Data
	if len(data) == 0 {
		data = json.RawMessage("{}")
	}
	b := make([]byte, 0, len(data)+192)
	switch e.Envelope {
	case EnvelopeSNS:
		b = append(b, `{"event":`...)
		b = appendJSONString(b, e.Type)
		b = append(b, `,"auctionId":`...)
		b = appendStringOrNull(b, e.AuctionID)
		b = append(b, `,"domain":`...)
		b = appendStringOrNull(b, e.Domain)
		b = append(b, `,"data":`...)
		b = append(b, data...)
		b = append(b, `,"timestamp":`...)
		b = strconv.AppendInt(b, e.OccurredAt.Unix(), 10)
		b = append(b, `,"id":`...)
		b = appendJSONString(b, deliveryID)
		b = append(b, '}')
	default:
		b = append(b, `{"event":`...)
		b = appendJSONString(b, e.Type)
		b = append(b, `,"timestamp":"`...)
		b = e.OccurredAt.UTC().AppendFormat(b, "2006-01-02T15:04:05.000Z07:00")
		b = append(b, `","webhook_id":`...)
		b = appendJSONString(b, deliveryID)
		b = append(b, `,"auction_id":`...)
		b = appendStringOrNull(b, e.AuctionID)
		b = append(b, `,"data":`...)
		b = append(b, data...)
		b = append(b, '}')
	}
	return b
}

func appendStringOrNull(b []byte, s string) []byte {
	if s == "" {
		return append(b, "null"...)
	}
	return appendJSONString(b, s)
}
