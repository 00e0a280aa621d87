// A game's own TypeScript, compiled against the packed @sessiondb/client
// (check.sh): the type declarations must describe both entry points as a
// user imports them. Never run; `tsc --noEmit` only.

import { SessionClient, SessionError, createClient, type RestoredSession, type UnsetReason } from '@sessiondb/client';
import { SessionStore, type ActorAddress, type Session } from '@sessiondb/client/server';

async function gameClient(storage: Storage): Promise<void> {
  const client: SessionClient = createClient({ baseUrl: 'https://sessions.example.com', storage });
  const off = client.on('session.unset', (_path, reason: UnsetReason) => console.log(`ended: ${reason}`));
  client.on('session.set', (_path, session) => console.log(session.actorId, session.expiresAt));
  const stored: string | null = client.storedKey();
  if (stored) {
    const restored: RestoredSession = await client.restore(stored);
    const level = await client.getData<number>('level');
    await client.setData('level', (level ?? 0) + restored.revision);
    await client.delData('level');
  }
  client.restore('player-7:secret', (err) => {
    if (err instanceof SessionError) console.log(err.reason, err.status);
  });
  off();
  await client.logout();
  client.close();
}

async function gameServer(token: string): Promise<void> {
  const store = new SessionStore({ url: 'http://127.0.0.1:7420', adminToken: token, timeout: 5000 });
  store.on('session.unset', (_path, { actorId, reason }) => console.log(actorId, reason));
  const session: Session = await store.register('player-7', 'en', { level: 1 });
  const same: Session = await store.resolve(session.key ?? '');
  await same.setData('level', 2);
  const level = await same.getData<number>('level');
  await same.extend();
  const addresses: ActorAddress[] = await store.getActorAddresses(['player-7']);
  const current: Session | null = await store.getActorSession('player-7');
  const moved: Session = await store.reassign('player-7', 'player-8');
  const ended: number = await store.expireActor('player-8', 'banned');
  await same.expire('banned');
  console.log(level, addresses.length, current?.id, moved.actorId, ended);
  await store.close();
}

export { gameClient, gameServer };
