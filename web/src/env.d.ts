/// <reference types="vite/client" />
// The shared API types pull in src/host/api.ts, whose route options come from this plugin's augmentation of fastify.
/// <reference types="@fastify/websocket" />
