package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/config"
	"github.com/walhook/walhook/mapper"
)

// dryRunEndpoint stands in for an endpoint when a dry run renders bodies:
// the body's webhook_id / id is a delivery id, which exists only per
// endpoint.
const dryRunEndpoint = "dry-run"

// dryRunLine is one JSON line of `walhook run --dry-run`.
type dryRunLine struct {
	Event     string          `json:"event"`
	EventID   string          `json:"event_id"`
	AuctionID string          `json:"auction_id,omitempty"`
	Domain    string          `json:"domain,omitempty"`
	Table     string          `json:"table"`
	Xid       uint32          `json:"xid"`
	CommitLSN string          `json:"commit_lsn"`
	Position  int             `json:"position"`
	Body      json.RawMessage `json:"body"`
}

// runDryRun streams from the slot and prints every event the mapping
// produces as a JSON line on stdout. It never touches the store, never
// confirms a position (the slot does not move: a later `walhook run` gets
// the same transactions) and writes nothing to the source (no heartbeats).
func runDryRun(ctx context.Context, cfg *config.Config, log *slog.Logger, stdout, stderr io.Writer) error {
	if err := refuseSourceStandby(ctx, cfg.Source.DSN); err != nil {
		return err
	}
	systemID, err := cdc.SystemID(ctx, cfg.Source.DSN)
	if err != nil {
		return fmt.Errorf("source %s: %w", describeDSN(cfg.Source.DSN), err)
	}
	m, err := compileMapper(cfg, systemID, log)
	if err != nil {
		return err
	}
	if err := checkLiveSchema(ctx, cfg.Source.DSN, cfg.Source.Publication, ruleOperations(cfg), m, log); err != nil {
		return err
	}
	opts := streamOptions(cfg, log)
	opts.HeartbeatInterval = 0
	opts.DryRun = true
	stream, err := cdc.NewStream(opts)
	if err != nil {
		return &UsageError{Err: err}
	}
	fmt.Fprintf(stderr, "walhook %s dry run: source %s, slot %s, publication %s; printing events, storing, delivering and confirming nothing (Ctrl-C stops)\n",
		Version, describeDSN(cfg.Source.DSN), cfg.Source.Slot, cfg.Source.Publication)

	streamErr := make(chan error, 1)
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { streamErr <- stream.Run(sctx, 0) }()
	enc := json.NewEncoder(stdout)
	for {
		select {
		case err := <-streamErr:
			if err != nil {
				return fmt.Errorf("replication: %w", err)
			}
			return nil
		case tx := <-stream.Txs():
			evs, err := m.Map(tx)
			if err != nil {
				stop()
				<-streamErr
				return err
			}
			for i := range evs {
				if err := enc.Encode(dryRunEvent(tx, &evs[i])); err != nil {
					stop()
					<-streamErr
					return fmt.Errorf("dry run: write: %w", err)
				}
			}
		}
	}
}

func dryRunEvent(tx *cdc.Tx, e *mapper.Event) dryRunLine {
	env := e.Envelope
	if env == "" {
		env = mapper.EnvelopeAuctionExcellence
	}
	return dryRunLine{
		Event: e.Type, EventID: e.ID, AuctionID: e.AuctionID, Domain: e.Domain, Table: e.Table,
		Xid: tx.Xid, CommitLSN: tx.CommitLSN.String(), Position: e.Position,
		Body: e.Body(mapper.DeliveryID(env, e.ID, dryRunEndpoint)),
	}
}
