/**
 * The agent's own Prometheus metrics (pipelines and inputs). Components that own metrics of
 * their own (runtime, outbox, link) register them on the same registry.
 */
import { Counter, Histogram, type Registry } from 'prom-client';

export interface PipelineMetrics {
  inferences: Counter<'pipeline' | 'model' | 'version' | 'outcome'>;
  inputRejected: Counter<'pipeline' | 'reason'>;
  latency: Histogram<'pipeline'>;
}

export function createPipelineMetrics(registry: Registry): PipelineMetrics {
  return {
    inferences: new Counter({
      name: 'edgefleet_agent_inferences_total',
      help: 'Inferences by pipeline, model version and outcome (ok, error, overloaded).',
      labelNames: ['pipeline', 'model', 'version', 'outcome'],
      registers: [registry],
    }),
    inputRejected: new Counter({
      name: 'edgefleet_agent_input_rejected_total',
      help: 'Inputs rejected before inference, by reason (too_large, malformed, schema, bad_input).',
      labelNames: ['pipeline', 'reason'],
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
