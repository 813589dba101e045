package main

import "testing"

// An UPDATE that moves a row to another partition is decoded as a DELETE
// and an INSERT (seen with walhook run --dry-run: a rule changed: [region]
// on the partitioned table fired for an update within a partition, and
// not for one that moved the row, while the table's insert/delete rule
// fired twice). check said "ready" for such a rule; it now warns about
// update rules whose changed: or when: reads a partition key (also of a
// sub-partition), and not about those that do not.
func TestCheckWarnsOfUpdateRulesOnPartitionKeys(t *testing.T) {
	t.Parallel()
	db := newRunDB(t, `CREATE TABLE accounts (id int8, region text, tier text, plan text, PRIMARY KEY (id, region, tier)) PARTITION BY LIST (region);
CREATE TABLE accounts_eu PARTITION OF accounts FOR VALUES IN ('eu') PARTITION BY LIST (tier);
CREATE TABLE accounts_eu_free PARTITION OF accounts_eu FOR VALUES IN ('free');
CREATE TABLE accounts_us PARTITION OF accounts FOR VALUES IN ('us');
ALTER TABLE accounts REPLICA IDENTITY FULL; ALTER TABLE accounts_eu REPLICA IDENTITY FULL;
ALTER TABLE accounts_eu_free REPLICA IDENTITY FULL; ALTER TABLE accounts_us REPLICA IDENTITY FULL;`)
	file, _ := runConfig(t, []byte(`
source:
  dsn: set-by-test
events:
  - event: account.moved
    table: public.accounts
    operations: [update]
    changed: [region]
  - event: account.upgraded
    table: public.accounts
    operations: [update]
    when: old.tier == "free" && new.tier != "free"
  - event: account.plan_changed
    table: public.accounts
    operations: [update]
    changed: [plan]
`), db.settings())
	out, _, _ := pubCLI(t, "check", "--config", file)
	ckWantLines(t, out,
		`^warn  rule: .*events\[0\]: event account\.moved: reads region, a partition key of public\.accounts: an UPDATE that changes it so that the row moves to another partition reaches walhook as a DELETE and an INSERT .*; map such moves with delete and insert rules, or keep the key unchanged$`,
		`^warn  rule: .*events\[1\]: event account\.upgraded: reads tier, a partition key of public\.accounts:`)
	ckNoLines(t, out, `.*account\.plan_changed`)
}
