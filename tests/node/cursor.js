// node-postgres with pg-cursor (issue 13's "must keep working" list): a
// cursor read in batches (Execute with a row limit, PortalSuspended), a
// parameterised query, a transaction and a LISTEN/NOTIFY round trip. Prints
// one line per result so a run through Custody can be compared with a
// direct one. Usage: node cursor.js (PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE)
const { Client } = require('pg');
const Cursor = require('pg-cursor');

async function main() {
  const c = new Client();
  await c.connect();
  const cursor = c.query(new Cursor('select g, md5(g::text) as h from generate_series(1, 25) g where g > $1', [3]));
  let batch;
  let n = 0;
  do {
    batch = await cursor.read(7);
    n += 1;
    console.log(`batch ${n}: ${batch.map((r) => r.g + ':' + r.h.slice(0, 6)).join(',')}`);
  } while (batch.length > 0);
  await cursor.close();
  const r = await c.query('select $1::int + $2::int as s, $3::text as t', [2, 3, 'héllo']);
  console.log(`params: ${r.rows[0].s} ${r.rows[0].t}`);
  await c.query('begin');
  await c.query('create temporary table nt (id int)');
  await c.query('insert into nt select generate_series(1, 4)');
  await c.query('rollback');
  const notified = new Promise((resolve) => c.on('notification', (m) => resolve(m)));
  await c.query('listen node_chan');
  await c.query("notify node_chan, 'ping'");
  const m = await notified;
  const pid = (await c.query('select pg_backend_pid() as p')).rows[0].p;
  console.log(`notify: ${m.channel} ${m.payload} own=${m.processId === pid}`);
  await c.end();
}

main().catch((e) => {
  console.error(e.message);
  process.exit(1);
});
