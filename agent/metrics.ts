/**
 * The agent's own Prometheus metrics (pipelines and inputs). Components that own metrics of
 * their own (runtime, outbox, link) register them on the same registry.
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

export interface PipelineMetrics {
  inferences: Counter<'pipeline' | 'model' | 'version' | 'outcome'>;
  inputRejected: Counter<'pipeline' | 'reason'>;
  /** Stream items dropped by the overload policy (drop oldest) or at shutdown. */
  inputDropped: Counter<'pipeline' | 'reason'>;
  /** Window and model-state resets of v2 models (a gap or reversal in a stream's timestamps, idle, eviction). */
  windowResets: Counter<'pipeline' | 'reason'>;
  /** Stream items waiting per pipeline. */
  streamQueued: Gauge<'pipeline'>;
  /** HTTP inference requests turned away with 429. */
  httpRejected: Counter<'pipeline' | 'reason'>;
  /** HTTP inference replies by status code. */
  httpResponses: Counter<'pipeline' | 'status'>;
  /** Folder input files by final outcome (done, failed). */
  folderFiles: Counter<'pipeline' | 'outcome'>;
  latency: Histogram<'pipeline'>;
}

export function createPipelineMetrics(registry: Registry): PipelineMetrics {
  return {
    inferences: new Counter({
      name: 'edgefleet_agent_inferences_total',
      help: 'Inferences by pipeline, model version and outcome (ok, error, overloaded, storage_error).',
      labelNames: ['pipeline', 'model', 'version', 'outcome'],
      registers: [registry],
    }),
    inputRejected: new Counter({
      name: 'edgefleet_agent_input_rejected_total',
      help: 'Inputs rejected before inference, by reason (too_large, malformed, schema, bad_input, wrong_kind).',
      labelNames: ['pipeline', 'reason'],
      registers: [registry],
    }),
    windowResets: new Counter({
      name: 'edgefleet_agent_window_resets_total',
      help: 'Sliding windows and model state of v2 models started afresh, by reason (gap, out_of_order, evicted, state_*).',
      labelNames: ['pipeline', 'reason'],
      registers: [registry],
    }),
    inputDropped: new Counter({
      name: 'edgefleet_agent_input_dropped_total',
      help: 'Stream inputs dropped unprocessed: overload (queue full, oldest dropped), shutdown, duplicate (redelivered id) or retained_replay (a retained reading already inferred).',
      labelNames: ['pipeline', 'reason'],
      registers: [registry],
    }),
    streamQueued: new Gauge({
      name: 'edgefleet_agent_stream_queued',
      help: 'Stream inputs waiting for inference, per pipeline.',
      labelNames: ['pipeline'],
      registers: [registry],
    }),
    httpRejected: new Counter({
      name: 'edgefleet_agent_http_rejected_total',
      help: 'HTTP inference requests refused with 429: overloaded (engine queue full) or concurrency (too many requests at once).',
      labelNames: ['pipeline', 'reason'],
      registers: [registry],
    }),
    httpResponses: new Counter({
      name: 'edgefleet_agent_http_infer_responses_total',
      help: 'HTTP inference replies by status code.',
      labelNames: ['pipeline', 'status'],
      registers: [registry],
    }),
    folderFiles: new Counter({
      name: 'edgefleet_agent_folder_files_total',
      help: 'Folder input files finished, by outcome (done, failed).',
      labelNames: ['pipeline', 'outcome'],
      registers: [registry],
    }),
    latency: new Histogram({
      name: 'edgefleet_agent_pipeline_duration_seconds',
      help: 'Time from input received to result published.',
      labelNames: ['pipeline'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers: [registry],
    }),
  };
}

/** Memory kills of model runs (issue #14): counted by the pool's watchdog, and at start from the marker. */
export function createMemoryKillCounter(registry: Registry): Counter<'model'> {
  return new Counter({
    name: 'edgefleet_agent_worker_memory_kills_total',
    help: 'Model runs that took the agent past runtime.memory.maxRssMiB, by model version (the agent is killed, restarted and the version rolled back).',
    labelNames: ['model'],
    registers: [registry],
  });
}
