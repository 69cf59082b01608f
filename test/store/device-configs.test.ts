import t from 'tap'
import { MemoryDeviceConfigStore } from '../../broker/store/memory-device-configs.js'
import { deviceConfigsContract } from './device-configs.contract.js'

deviceConfigsContract(t, 'memory', async ({ now }) => {
  const store = new MemoryDeviceConfigStore({ now })
  return { store, cleanup: () => store.close() }
})
